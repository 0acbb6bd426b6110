"""Hugging Face model families through `fedumm run`, loaded by path: a tiny random model of
each family is built from config objects, saved with its tokenizer and PIL image processor, and
federated on ShapesWorld VQA and on classification with missing modalities."""

import json

import pytest
import torch
from safetensors.torch import load_file

from fedumm.config import ModelConfig, load_config
from fedumm.data.images import ImageFile
from fedumm.models import load
from fedumm.models.architectures import TINY, build_random
from fedumm.models.foundation import checksum
from fedumm.models.hf import FAMILIES, HFProcessor
from fedumm.models.lora import add_lora, get_adapter
from fedumm.parts import build_parts
from tests.test_classification_end_to_end import CLASSIFICATION
from tests.tiny import TINY_RUN, assert_trained, run_tiny

TWO_CLIENTS = ["federation.num_clients=2", "federation.clients_per_round=2"]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {family: build_random(family, root / family) for family in TINY}


def _run(out, model_path, *overrides):
    return run_tiny(out, "builtin", f"model.name_or_path={model_path}", *TWO_CLIENTS, *overrides)


@pytest.mark.parametrize("family", list(TINY))
def test_each_family_federates_vqa_and_classification_through_fedumm_run(
    family, tiny_models, tmp_path
):
    result = _run(tmp_path / "vqa", tiny_models[family])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "vqa" / "results.json").read_text())
    assert len(results["rounds"]) == 2
    assert results["model"] == {
        "family": family,
        "random_weights": f"tiny-{family}",
        "name": str(tiny_models[family]),
        "sha256": checksum(tiny_models[family]),
    }
    assert f"({family}, float32)" in (tmp_path / "vqa" / "report.md").read_text()
    assert 0 <= results["final"]["metrics"]["vqa_accuracy"] <= 100
    assert_trained(results)
    comm = results["communication"]
    assert comm["trainable_parameters"] < comm["total_parameters"] / 10
    assert comm["ratio"] > 10  # adapters only: the frozen base never travels

    missing = ["partition.modality.scenario=missing", "partition.modality.drop_probability=0.5"]
    result = _run(tmp_path / "cls", tiny_models[family], *CLASSIFICATION, *missing)
    assert result.exit_code == 0, result.output
    classified = json.loads((tmp_path / "cls" / "results.json").read_text())
    assert 0 <= classified["final"]["metrics"]["classification_auc"] <= 100
    assert_trained(classified)


@pytest.mark.parametrize("family", list(TINY))
def test_default_lora_targets_the_language_models_attention_only(family, tiny_models):
    loaded = load(ModelConfig(name_or_path=str(tiny_models[family])))
    assert isinstance(loaded.processor, HFProcessor) and loaded.processor.family_name == family
    names = [n for n, m in loaded.model.named_modules() if isinstance(m, torch.nn.Linear)]
    outside = [n for n in names if n.endswith("q_proj") and not n.startswith(loaded.lora_scope)]
    model = add_lora(loaded.model, 2, 4.0, 0.0, loaded.default_targets, 0, scope=loaded.lora_scope)
    keys = list(get_adapter(model))
    assert keys and all(f"model.{loaded.lora_scope}." in k for k in keys), keys[:3]
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert any(f".{proj}.lora_A" in k for k in keys)
    if family in ("llava", "idefics3", "paligemma"):  # their vision towers also have q_proj
        assert outside and not any(o in k for o in outside for k in keys)


def test_a_rerun_gives_identical_numbers_and_the_adapter_is_saved(tiny_models, tmp_path):
    runs = [tmp_path / "a", tmp_path / "b"]
    for out in runs:
        assert _run(out, tiny_models["llava"]).exit_code == 0
    a, b = (json.loads((out / "results.json").read_text()) for out in runs)
    assert [r["metrics"] for r in a["rounds"]] == [r["metrics"] for r in b["rounds"]]
    assert a["baselines"] == b["baselines"]
    adapters = [load_file(out / "global_adapter.safetensors") for out in runs]
    assert adapters[0].keys() == adapters[1].keys()
    assert all(torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[0])


def test_bfloat16_base_weights_load_and_train(tiny_models, tmp_path):
    loaded = load(ModelConfig(name_or_path=str(tiny_models["qwen2_vl"]), dtype="bfloat16"))
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    result = _run(tmp_path / "run", tiny_models["qwen2_vl"], "model.dtype=bfloat16")
    assert result.exit_code == 0, result.output


def test_a_missing_model_folder_is_named(tmp_path):
    result = _run(tmp_path / "run", tmp_path / "no-such-model")
    assert result.exit_code == 1
    assert "no model folder at" in result.output and "no-such-model" in result.output


def test_an_unsupported_model_type_lists_the_supported_families(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path / "llama"
    config = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    result = _run(tmp_path / "run", path)
    assert result.exit_code == 1
    assert "'llama' is not a supported family" in result.output
    assert all(f in result.output for f in FAMILIES)


def test_an_unknown_family_name_is_a_config_error(tiny_models, tmp_path):
    result = _run(tmp_path / "run", tiny_models["llava"], "model.family=blip3o")
    assert result.exit_code == 2
    assert "model.family" in result.output and "llava" in result.output


def test_a_lora_target_outside_the_language_model_names_the_modules(tiny_models, tmp_path):
    result = _run(tmp_path / "run", tiny_models["llava"], "lora.target_modules=[fc1]")
    assert result.exit_code == 1
    out = result.output
    assert "['fc1'] match no module in model.language_model" in out and "q_proj" in out


def test_generation_needs_a_model_that_draws(tiny_models, tmp_path):
    result = _run(tmp_path / "run", tiny_models["chameleon"], "data.tasks=[vqa, generation]")
    assert result.exit_code == 1
    assert "generation needs a model that draws images" in result.output


def test_a_hugging_face_model_reads_vqa_v2_and_hateful_memes_files(
    tiny_models, vqa_root, hateful_memes, tmp_path
):
    """Official file formats into a Hugging Face model: images resized to what its image
    processor wants, undecodable ones counted, the official VQA score and AUC computed."""
    vqa = [
        "data.kind=vqa_v2",
        f"data.vqa_v2.root={vqa_root}",
        "data.train_samples=36",
        "data.test_samples=12",
        "partition.min_samples=2",
    ]
    result = _run(tmp_path / "vqa", tiny_models["paligemma"], *vqa)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "vqa" / "results.json").read_text())["data"]["vqa"]
    assert data["train_samples"] == 34 and len(data["skipped_images"]) == 1
    fl = _federation(tiny_models["paligemma"], *vqa)
    kept = [e.inputs["images"] for e in fl.tasks["vqa"].train]
    assert all(isinstance(k, ImageFile) and k.size == 32 for k in kept)
    assert fl.processor.collate(fl.tasks["vqa"].train[:4])["pixel_values"].shape == (4, 3, 32, 32)

    memes = [
        "data.tasks=[classification]",
        "data.classification.source=hateful_memes",
        f"data.classification.root={hateful_memes}",
        "partition.min_samples=2",
    ]
    result = _run(tmp_path / "memes", tiny_models["smolvlm"], *memes)
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "memes" / "results.json").read_text())
    assert results["data"]["classification"]["skipped_images"] == ["img/bad.png"]
    assert 0 <= results["final"]["metrics"]["classification_auc"] <= 100
    assert_trained(results)
    task = _federation(tiny_models["smolvlm"], *memes).tasks["classification"]
    assert all(isinstance(k, ImageFile) for k in task.images + task.test_images)


def _federation(model_path, *overrides):
    """The federation a tiny two-client run builds: its images stay on disk as references,
    decoded per batch."""
    items = [*TINY_RUN, *TWO_CLIENTS, *overrides, f"model.name_or_path={model_path}"]
    return build_parts(load_config("configs/quickstart.yaml", items))


def test_partition_reads_only_the_processor(tiny_models, tmp_path):
    """`fedumm partition` needs the data as the model reads it, not the model's weights."""
    import shutil

    from fedumm.cli import app
    from tests.tiny import runner

    folder = tmp_path / "no-weights"
    shutil.copytree(tiny_models["qwen2_vl"], folder)
    (folder / "model.safetensors").unlink()
    args = ["partition", "configs/quickstart.yaml", "-o", str(tmp_path / "part")]
    for item in [*TINY_RUN, *TWO_CLIENTS, f"model.name_or_path={folder}"]:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "part" / "partition.json").read_text())
    assert sum(c["samples"] for c in summary["clients"]) == 96
