"""Models: the built-in unified model (umm, processor, foundation), Hugging Face models (hf),
LoRA (lora), the quantized frozen base (quantization), and `load`, which picks one from a
run's config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fedumm.config import ConfigError, LoraSection, ModelConfig
from fedumm.models.processor import Processor
from fedumm.runtime import CPU, Runtime

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# The built-in model learns new answer words, so its adapters reach lm_head and the MLPs too.
BUILTIN_TARGETS = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "lm_head",
]


@dataclass
class LoadedModel:
    model: torch.nn.Module  # frozen, in eval mode
    processor: Processor
    lora_scope: str  # module path LoRA adapters stay inside ('' = anywhere)
    default_targets: list[str]  # LoRA target modules when the config names none
    num_layers: int  # of the language model


def config_problems(spec: ModelConfig) -> list[tuple[str, str]]:
    """(config key, why) for what the model section asks that no model offers."""
    from fedumm.models import foundation
    from fedumm.models.hf import FAMILIES

    problems = []
    if spec.family != "auto" and spec.family not in FAMILIES:
        problems.append(
            (
                "model.family",
                f"unknown family {spec.family!r}; supported: auto, {', '.join(FAMILIES)}",
            )
        )
    if spec.name_or_path is None:
        try:
            foundation.location(spec.foundation)
        except ConfigError:
            problems.append(("model.foundation", foundation.unknown(spec.foundation)))
    return problems


def default_targets(spec: ModelConfig) -> list[str]:
    """The LoRA target modules of the model `spec` names, used when a config names none."""
    if spec.name_or_path is not None:
        from fedumm.models import hf

        return hf.DEFAULT_TARGETS
    return BUILTIN_TARGETS


def load(spec: ModelConfig, runtime: Runtime = CPU) -> LoadedModel:
    """The model a run's `model` section names, a Hugging Face model or a fedumm foundation,
    frozen, its weights in `spec.dtype` on `runtime.device`, its language model's linear
    weights quantized if `spec.quantization` asks."""
    if spec.name_or_path is not None:
        from fedumm.models import hf

        model, processor = hf.load(spec.name_or_path, spec.family, DTYPES[spec.dtype])
        scope, layers = processor.family.language_model, model.config.get_text_config()
        loaded = LoadedModel(
            model, processor, scope, default_targets(spec), layers.num_hidden_layers
        )
    else:
        from fedumm.models import foundation

        model, processor = foundation.load(spec.foundation)
        model.to(DTYPES[spec.dtype])
        loaded = LoadedModel(
            model, processor, "", default_targets(spec), model.config.num_hidden_layers
        )
    if spec.quantization != "none":
        from fedumm.models.quantization import quantize

        quantize(loaded.model, spec.quantization, loaded.lora_scope, runtime.device)
    place(loaded.model, runtime)
    return loaded


def adapted(loaded: LoadedModel, lora: LoraSection | None, seed: int) -> torch.nn.Module:
    """The model a run trains: LoRA adapters on the frozen base, A drawn from `seed` (the same
    for every client and every process), or without a lora section the whole base (federated
    full fine-tuning)."""
    if lora is None:
        return loaded.model.requires_grad_(True)
    from fedumm.models.lora import add_lora

    return add_lora(
        loaded.model,
        lora.r,
        lora.alpha,
        lora.dropout,
        lora.target_modules or loaded.default_targets,
        seed,
        extra_ranks=tuple(lora.client_ranks or ()),
        scope=loaded.lora_scope,
        modules_to_save=lora.modules_to_save,
    )


def base_name(spec: ModelConfig) -> str:
    """What a saved adapter names as its base model: the Hugging Face model, or the fedumm
    foundation folder (the shipped one by its path)."""
    if spec.name_or_path is not None:
        return spec.name_or_path
    from fedumm.models import foundation

    return str(foundation.location(spec.foundation))


def identity(spec: ModelConfig) -> dict:
    """What a run's base model was: its name and the sha256 of its weights, config and
    tokenizer (None for a hub id not on disk), and its quantization if it trained on a
    quantized copy. Sweeps reuse a finished run only when it matches, so a renamed or
    retrained foundation is never mistaken for another."""
    from fedumm.models import foundation

    name = spec.name_or_path or spec.foundation
    folder = Path(spec.name_or_path) if spec.name_or_path else foundation.location(name)
    out = {"name": name, "sha256": foundation.checksum(folder) if folder.is_dir() else None}
    if spec.quantization != "none":
        out["quantization"] = spec.quantization
    return out


def place(model: torch.nn.Module, runtime: Runtime) -> torch.nn.Module:
    """`model` moved to the runtime's device, with gradient checkpointing if it asks for it
    (non-reentrant: frozen inputs need no gradient, and LoRA's gradients stay exact)."""
    model.to(runtime.device)
    if runtime.gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x's name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return model


def load_processor(spec: ModelConfig) -> Processor:
    """Only the processor of the model `spec` names: what reading data needs (a Hugging Face
    model's weights stay on disk; the built-in model is small and carries its codebook)."""
    if spec.name_or_path is not None:
        from fedumm.models import hf

        return hf.load_processor(spec.name_or_path, spec.family)
    from fedumm.models import foundation

    return foundation.load(spec.foundation)[1]
