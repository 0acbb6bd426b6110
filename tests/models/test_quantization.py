"""The quantized frozen base (`model.quantization`): it trains fp32 adapters through peft's
bitsandbytes layers, a federation runs on it, its adapter loads onto the unquantized base
(`fedumm eval`, `export --merge`), and what it cannot do is refused naming the key."""

import json
import re

import pytest
import torch

from fedumm.cli import app
from fedumm.config import ConfigError, LoraSection, ModelConfig
from fedumm.extras import installed
from fedumm.federation import wire
from fedumm.models import adapted, load
from fedumm.models.lora import full_state, get_adapter, set_adapter
from fedumm.models.quantization import check_device, quantized_layers
from fedumm.validation import load_run_config
from tests.tiny import assert_trained, run_tiny, runner

# the refusals run without bitsandbytes; what quantizes needs it
needs_bitsandbytes = pytest.mark.skipif(
    not installed("bitsandbytes"), reason="pip install 'fedumm[quantization]'"
)

LANGUAGE_LINEARS = 7 * 4  # the shipped foundation: 4 layers of q/k/v/o + gate/up/down


def _train(model: torch.nn.Module, steps: int) -> list[float]:
    """Losses of `steps` AdamW steps on one fixed batch of token ids."""
    ids = torch.randint(0, 400, (4, 16), generator=torch.Generator().manual_seed(0))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def _quantized_lora(quantization: str) -> torch.nn.Module:
    return adapted(load(ModelConfig(quantization=quantization)), LoraSection(r=4), seed=0)


@needs_bitsandbytes
@pytest.mark.parametrize(
    "quantization, stored",
    [("int8", torch.int8), pytest.param("nf4", torch.uint8, marks=pytest.mark.slow)],
)
def test_a_quantized_base_trains_fp32_adapters(quantization, stored):
    model = _quantized_lora(quantization)
    layers = quantized_layers(model)
    assert len(layers) == LANGUAGE_LINEARS  # lm_head stays unquantized, LoRA adapts it
    assert not any("lm_head" in name for name in layers)
    assert {layer.weight.dtype for layer in layers.values()} == {stored}
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    losses = _train(model, 4)
    assert losses[-1] < losses[0], losses


@needs_bitsandbytes
def test_a_hugging_face_models_language_model_alone_is_quantized(tmp_path):
    from fedumm.models.architectures import build_random

    folder = build_random("llava", tmp_path / "llava")
    loaded = load(ModelConfig(name_or_path=str(folder), quantization="nf4"))
    layers = quantized_layers(loaded.model)
    assert len(layers) == 7 * 2 and all(n.startswith("model.language_model.") for n in layers)
    plain = [n for n, m in loaded.model.named_modules() if type(m) is torch.nn.Linear]
    assert plain and all(not n.startswith("model.language_model.") for n in plain)


@needs_bitsandbytes
def test_an_adapter_trained_on_the_quantized_base_fits_the_unquantized_one():
    """Tolerance: int8 rows (absmax scaled) move each weight by under 0.4% of its row's
    largest; through the foundation's 4 layers the logits stay within 5% of their spread."""
    quantized = _quantized_lora("int8")
    _train(quantized, 4)
    adapter = get_adapter(quantized)
    full = adapted(load(ModelConfig()), LoraSection(r=4), seed=0)
    set_adapter(full, adapter)
    ids = torch.randint(0, 400, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = quantized(input_ids=ids).logits, full(input_ids=ids).logits
    assert (ours - theirs).abs().max() < 0.05 * theirs.std()
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))
    # what full fine-tuning would send, as the traffic comparison counts it: the full weights
    assert wire.num_bytes(full_state(quantized)) == wire.num_bytes(full_state(full))


@needs_bitsandbytes
def test_a_federation_on_an_int8_base_runs_and_its_adapter_evaluates_and_merges(
    tiny_foundation, tmp_path
):
    out = tmp_path / "run"
    result = run_tiny(
        out,
        tiny_foundation,
        "model.quantization=int8",
        "baselines.local=false",
        "baselines.centralized=false",
    )
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["model"]["quantization"] == "int8"
    assert_trained(results)
    result = runner.invoke(app, ["eval", str(out), "--quiet"])  # on the unquantized base
    assert result.exit_code == 0, result.output
    scored = json.loads((out / "eval" / "eval.json").read_text())
    assert scored["metrics"].keys() == results["final"]["metrics"].keys()
    merged = tmp_path / "merged"
    result = runner.invoke(app, ["export", str(out), "-o", str(merged), "--merge"])
    assert result.exit_code == 0, result.output
    model = load(ModelConfig(foundation=str(merged))).model  # a plain model: no bnb layers
    assert not quantized_layers(model)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["model.quantization=nf4", "federation.strategy.name=flora"],
            "model.quantization: flora writes its aggregate into the frozen weights",
        ),
        (
            ["model.quantization=int8", "federation.strategy.name=fedex_lora"],
            "model.quantization: fedex_lora writes its aggregate",
        ),
        (
            ["model.quantization=int8", "lora=null"],
            "model.quantization: int8 weights cannot be fine-tuned in full",
        ),
    ],
)
def test_what_a_quantized_base_cannot_train_is_refused_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_run_config(None, overrides)


def test_a_device_without_kernels_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"model\.quantization: nf4 has no bitsandbytes"):
        check_device("nf4", torch.device("mps"))


@pytest.mark.cuda
@needs_bitsandbytes
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_a_federation_on_a_quantized_base_trains_on_a_gpu(quantization, tiny_foundation, tmp_path):
    out = tmp_path / "run"
    result = run_tiny(
        out,
        tiny_foundation,
        f"model.quantization={quantization}",
        "runtime.device=cuda",
        "baselines.local=false",
    )
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["model"]["quantization"] == quantization
    assert results["runtime"]["device"] == "cuda:0"
    assert_trained(results)
