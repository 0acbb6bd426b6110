"""A run's trained model, used as a person would: its adapter/ loads with peft alone, a merged
export loads with transformers alone, `fedumm eval` scores it again, `ask` and `draw` use it,
and bad input is refused with the path and the reason."""

import json

import numpy as np
import pytest
import torch
from peft import PeftModel
from PIL import Image
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

from fedumm.cli import EMPTY_ANSWER, app
from fedumm.models.architectures import build_random
from fedumm.models.processor import encode_vqa
from fedumm.trained import ask, load, open_run
from tests.tiny import run_tiny, runner

QUICK = ["baselines.local=false", "baselines.centralized=false", "threads=1"]


def _batch(processor, n: int = 3):
    """A few understanding prompts with answers: what the logits are compared on."""
    images = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    encoded = encode_vqa(processor, images, ["what color?"] * n, ["red"] * n)
    return processor.collate(encoded)


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


@pytest.fixture(scope="module")
def llava_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    base = build_random("llava", root / "base")
    out = root / "run"
    result = run_tiny(out, "builtin", f"model.name_or_path={base}", *QUICK)
    assert result.exit_code == 0, result.output
    return base, out


def test_the_adapter_loads_with_peft_alone_and_gives_fedumms_logits(llava_run):
    base, out = llava_run
    trained = load(open_run(out))
    batch = _batch(trained.processor)
    expected = _logits(trained.model, batch)
    peft_model = PeftModel.from_pretrained(
        AutoModelForImageTextToText.from_pretrained(base), out / "adapter"
    )
    got = _logits(peft_model.eval(), batch)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # and the adapter is the trained one, not the fresh one (B = 0 would be the base's logits)
    bare = _logits(AutoModelForImageTextToText.from_pretrained(base).eval(), batch)
    assert (got - bare).abs().max() > 1e-4


def test_a_merged_export_loads_with_transformers_alone(llava_run, tmp_path):
    base, out = llava_run
    result = runner.invoke(app, ["export", str(out), "-o", str(tmp_path / "merged"), "--merge"])
    assert result.exit_code == 0, result.output
    trained = load(open_run(out))
    batch = _batch(trained.processor)
    merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged").eval()
    assert not any("lora" in k for k in merged.state_dict())
    torch.testing.assert_close(
        _logits(merged, batch), _logits(trained.model, batch), atol=1e-5, rtol=0
    )
    for name in ("tokenizer_config.json", "preprocessor_config.json"):
        assert (tmp_path / "merged" / name).is_file()

    result = runner.invoke(app, ["export", str(out), "-o", str(tmp_path / "adapter")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]


def test_eval_reproduces_the_runs_final_scores_and_the_zero_shot_baseline(
    tiny_foundation, tmp_path
):
    out = tmp_path / "run"
    result = run_tiny(out, tiny_foundation, "baselines.local=false", "baselines.centralized=false")
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    result = runner.invoke(app, ["eval", str(out), "--baseline", "zero_shot", "--quiet"])
    assert result.exit_code == 0, result.output
    scored = json.loads((out / "eval" / "eval.json").read_text())
    assert scored["metrics"] == results["final"]["metrics"]
    assert scored["zero_shot"] == results["baselines"]["zero_shot"]["metrics"]
    assert "| trained (the global model) |" in (out / "eval" / "eval.md").read_text()

    # `ask` answers with the trained model; `draw` draws with it (the built-in model draws)
    picture = tmp_path / "scene.png"
    Image.fromarray(np.full((32, 32, 3), 200, dtype=np.uint8)).save(picture)
    question = "what color is the circle?"
    result = runner.invoke(app, ["ask", str(out), "--image", str(picture), "--question", question])
    assert result.exit_code == 0, result.output
    answer = ask(open_run(out), picture, question)  # a tiny model may end its reply at once
    assert result.output.strip() == (answer or EMPTY_ANSWER)
    result = runner.invoke(
        app,
        [
            "draw",
            str(out),
            "--prompt",
            "a red circle",
            "--prompt",
            "a blue square",
            "-o",
            str(tmp_path / "drawn.png"),
        ],
    )
    assert result.exit_code == 0, result.output
    drawn = np.asarray(Image.open(tmp_path / "drawn.png"))
    assert drawn.shape[1] == 2 * drawn.shape[0]  # two images side by side

    # the evaluation of another data set: the same adapter on VQA families it never saw alone
    other = tmp_path / "other"
    result = runner.invoke(
        app,
        [
            "eval",
            str(out),
            "-o",
            str(other),
            "--quiet",
            "--set",
            "data.test_samples=12",
            "--set",
            "seed=5",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((other / "eval.json").read_text())["data"]["vqa"]["test_samples"] == 12


def test_fedsa_writes_each_clients_model_and_flora_its_folded_deltas(tiny_foundation, tmp_path):
    out = tmp_path / "fedsa"
    result = run_tiny(out, tiny_foundation, "federation.strategy.name=fedsa_lora", *QUICK)
    assert result.exit_code == 0, result.output
    clients = sorted(p.name for p in (out / "adapter" / "clients").iterdir())
    results = json.loads((out / "results.json").read_text())
    trained = {c for r in results["rounds"] for c in r["client_metrics"]}
    assert clients == sorted(trained) and "site-1" in clients  # who never trained: the global
    run = open_run(out, "site-1")
    personal = load(run).model
    glob = load(open_run(out)).model
    a = dict(personal.named_parameters())
    b = dict(glob.named_parameters())
    shared = [k for k in a if "lora_A" in k]
    assert all(torch.equal(a[k], b[k]) for k in shared)  # A is the federation's
    assert any(not torch.equal(a[k], b[k]) for k in a if "lora_B" in k)  # B is the client's
    result = runner.invoke(app, ["eval", str(out), "--client", "site-1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert 0 <= results["final"]["metrics"]["vqa_accuracy"] <= 100

    out = tmp_path / "flora"
    result = run_tiny(out, tiny_foundation, "federation.strategy.name=flora", *QUICK)
    assert result.exit_code == 0, result.output
    assert (out / "adapter" / "folded_deltas.safetensors").is_file()
    merged_dir = tmp_path / "flora_merged"
    result = runner.invoke(app, ["export", str(out), "-o", str(merged_dir), "--merge"])
    assert result.exit_code == 0, result.output
    trained = load(open_run(out))
    batch = _batch(trained.processor)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    torch.testing.assert_close(
        _logits(merged, batch), _logits(trained.model, batch), atol=1e-5, rtol=0
    )
    scored = runner.invoke(app, ["eval", str(out), "--quiet"])
    assert scored.exit_code == 0, scored.output
    again = json.loads((out / "eval" / "eval.json").read_text())["metrics"]
    assert again == json.loads((out / "results.json").read_text())["final"]["metrics"]


def test_bad_input_is_refused_with_the_path_and_the_reason(llava_run, tiny_foundation, tmp_path):
    base, out = llava_run
    result = runner.invoke(app, ["eval", str(tmp_path)])
    assert result.exit_code == 1
    assert f"{tmp_path}: no results.json" in result.output

    result = runner.invoke(app, ["eval", str(out), "--set", f"model.name_or_path={tmp_path}"])
    assert result.exit_code != 0
    assert "the adapter was trained on" in result.output

    result = runner.invoke(app, ["eval", str(out), "--set", "lora.r=3"])
    assert result.exit_code == 1
    assert "the adapter has rank 2, the config's lora.r is 3" in result.output

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    result = runner.invoke(app, ["ask", str(out), "--image", str(broken), "--question", "what?"])
    assert result.exit_code == 1
    assert f"{broken}: not an image that can be decoded" in result.output

    picture = tmp_path / "ok.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(picture)
    result = runner.invoke(app, ["ask", str(out), "--image", str(picture), "--question", " "])
    assert result.exit_code == 1 and "the question is empty" in result.output

    result = runner.invoke(app, ["draw", str(out), "--prompt", "a red circle"])
    assert result.exit_code == 1 and "does not draw images" in result.output

    result = runner.invoke(app, ["eval", str(out), "--client", "site-9"])
    assert result.exit_code == 1 and "no adapter of client 'site-9'" in result.output

    result = runner.invoke(app, ["eval", str(out), "--baseline", "local"])
    assert result.exit_code == 2 and "the one baseline is zero_shot" in result.output
