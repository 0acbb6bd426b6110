"""Janus, a unified Hugging Face model, federated for understanding and generation: its
text-to-image loss (VQ-VAE codes through the generation embeddings, predicted by the generation
head), sampling through transformers' own Janus sampler, and the refusals around them."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from fedumm.config import ModelConfig, PretrainConfig
from fedumm.models import janus, load
from fedumm.models.architectures import build_random
from fedumm.pretraining import pretrain
from tests.conftest import TINY_PRETRAIN
from tests.tiny import run_tiny

UNIFIED = [
    "data.tasks=[vqa, generation]",
    "partition.client_tasks=[vqa, generation, both]",
    "threads=1",
]


@pytest.fixture(scope="module")
def tiny_janus(tmp_path_factory):
    return build_random("janus", tmp_path_factory.mktemp("janus") / "model")


def test_the_generation_loss_is_next_code_prediction_beside_the_text_loss(tiny_janus):
    """A batch with one generation row and one understanding row: the loss is the mean over
    all targets of the answer's token loss (lm_head) and the codes' loss (generation head),
    computed here by hand from the language model's hidden states."""
    loaded = load(ModelConfig(name_or_path=str(tiny_janus)))
    model, processor = loaded.model, loaded.processor
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    codes = processor.encode_generation_images(image[None])[0]
    drawing = processor.generation("a red circle", codes)
    reading = processor.understanding(processor.encode_images(image[None])[0], "what?", "red")
    batch = processor.collate([drawing, reading])
    mixed = janus.loss(model, batch)

    text = model(**processor.collate([reading])).loss  # the model's own loss on the answer
    n_text = sum(t != -100 for t in reading.labels[1:])
    base = janus.janus(model)
    prompt = torch.tensor([drawing.input_ids[: -len(codes)]])
    embeds = torch.cat(
        [
            base.get_input_embeddings()(prompt),
            base.prepare_embeddings_for_image_generation(torch.tensor(codes)[None]),
        ],
        1,
    )
    hidden = base.model.language_model(inputs_embeds=embeds).last_hidden_state[0]
    start = prompt.shape[1] - 1  # the hidden state before each code predicts it
    scores = base.model.generation_head(hidden[start : start + len(codes)])
    drawn = F.cross_entropy(scores, torch.tensor(codes))
    expected = (text * n_text + drawn * len(codes)) / (n_text + len(codes))
    assert float(mixed) == pytest.approx(float(expected), rel=1e-4)


def test_janus_federates_vqa_and_generation_and_every_method_draws(tiny_janus, tmp_path):
    out = tmp_path / "run"
    result = run_tiny(out, "builtin", f"model.name_or_path={tiny_janus}", *UNIFIED)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    for method in ("zero_shot", "local", "centralized"):
        metrics = results["baselines"][method]["metrics"]
        assert {"vqa_accuracy", "geneval_overall"} <= metrics.keys()
    final = results["final"]["metrics"]
    assert final["num_images"] == 6 * 2 * 2  # tags x prompts x images per prompt, all judged
    for name in ("zero_shot", "federated", "centralized", "local_site-1"):
        assert (out / f"generated_{name}.png").stat().st_size > 0
    # one adapter for both tasks: generation clients moved the shared language model's LoRA
    a = load_file(out / "global_adapter.safetensors")
    assert all(".language_model." in k for k in a) and len(a) > 0
    losses = [m["loss"] for r in results["rounds"] for m in r["client_metrics"].values()]
    assert all(np.isfinite(losses))


def test_the_generation_head_may_train_and_travel_too(tiny_janus, tmp_path):
    """lora.modules_to_save: the generation head trains in full and is part of every message."""
    runs = {}
    for name, extra in (("lora", []), ("head", ["lora.modules_to_save=[generation_head]"])):
        result = run_tiny(
            tmp_path / name,
            "builtin",
            f"model.name_or_path={tiny_janus}",
            *UNIFIED,
            "baselines.local=false",
            *extra,
        )
        assert result.exit_code == 0, result.output
        runs[name] = json.loads((tmp_path / name / "results.json").read_text())
    head = load_file(tmp_path / "head" / "global_adapter.safetensors")
    assert any("generation_head" in k for k in head)
    extra = sum(v.numel() for k, v in head.items() if "generation_head" in k)
    up = [r["communication"]["adapter_message_bytes"] for r in (runs["lora"], runs["head"])]
    assert up[1] - up[0] >= 4 * extra  # the head's fp32 weights travel

    # the trained head is part of the exported adapter, and `fedumm draw` uses it
    from fedumm.cli import app
    from tests.tiny import runner

    config = json.loads((tmp_path / "head" / "adapter" / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["generation_head"]
    png = tmp_path / "drawn.png"
    result = runner.invoke(
        app, ["draw", str(tmp_path / "head"), "--prompt", "a red circle", "-o", str(png)]
    )
    assert result.exit_code == 0, result.output
    from PIL import Image

    assert Image.open(png).size == (32, 32)
    result = runner.invoke(app, ["draw", str(tmp_path / "head"), "--prompt", ""])
    assert result.exit_code == 1 and "a prompt is empty" in result.output


def test_a_family_that_cannot_draw_is_refused_naming_it(tmp_path):
    llava = build_random("llava", tmp_path / "llava")
    result = run_tiny(
        tmp_path / "run", "builtin", f"model.name_or_path={llava}", "data.tasks=[generation]"
    )
    assert result.exit_code == 1
    assert "is a llava model, which only reads them" in result.output


def test_a_janus_without_its_vq_vae_and_generation_head_is_refused_for_generation(
    tiny_janus, tmp_path
):
    export = tmp_path / "understanding-only"
    export.mkdir()
    for f in tiny_janus.iterdir():
        if f.name != "model.safetensors":
            (export / f.name).write_bytes(f.read_bytes())
    weights = load_file(tiny_janus / "model.safetensors")
    kept = {
        k: v
        for k, v in weights.items()
        if not k.startswith(("model.vqmodel.", "model.generation_head."))
    }
    save_file(kept, export / "model.safetensors", metadata={"format": "pt"})
    result = run_tiny(
        tmp_path / "run", "builtin", f"model.name_or_path={export}", "data.tasks=[generation]"
    )
    assert result.exit_code == 1
    assert "generation needs the VQ-VAE, generation head of" in result.output
    understanding = run_tiny(
        tmp_path / "vqa",
        "builtin",
        f"model.name_or_path={export}",
        "baselines.local=false",
        "baselines.centralized=false",
    )
    assert understanding.exit_code == 0, understanding.output  # reading still works


def test_sampling_is_seeded_and_leaves_the_global_generator_alone(tiny_janus):
    loaded = load(ModelConfig(name_or_path=str(tiny_janus)))
    model, processor = loaded.model, loaded.processor
    state = torch.get_rng_state()
    a = processor.draw(model, ["a red circle", "two squares"], 5, 1.0, None, 3.0, 8)
    b = processor.draw(model, ["a red circle", "two squares"], 5, 1.0, None, 3.0, 8)
    assert a.shape == (2, 32, 32, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert torch.equal(torch.get_rng_state(), state)
    plain = processor.draw(model, ["a red circle"], 5, 0.0, None, 1.0, 8)  # greedy, no guidance
    assert plain.shape == (1, 32, 32, 3)


def test_a_janus_foundation_is_pretrained_on_shapesworld_and_federates(tmp_path):
    """`fedumm pretrain` with architecture janus, at tiny scale: its VQ-VAE fitted to the patch
    codebook, then captions and caption-to-image; the folder runs by path, rebuilt the same."""
    tiny = dict(TINY_PRETRAIN, architecture="janus", vq_steps=4, codebook_size=40)
    metrics = pretrain(PretrainConfig(**tiny), tmp_path / "a")
    assert {"vq_code_agreement", "vq_pixel_error", "caption_to_image_loss"} <= metrics.keys()
    pretrain(PretrainConfig(**tiny), tmp_path / "b")
    a, b = (load_file(tmp_path / d / "model.safetensors") for d in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit from its seed
    result = run_tiny(
        tmp_path / "run",
        "builtin",
        f"model.name_or_path={tmp_path / 'a'}",
        *UNIFIED,
        "baselines.local=false",
    )
    assert result.exit_code == 0, result.output
