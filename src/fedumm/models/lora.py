"""LoRA through peft, and the adapter state-dict helpers the federation moves around."""

from __future__ import annotations

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from peft import set_peft_model_state_dict as _set

Params = dict[str, torch.Tensor]


def add_lora(model: torch.nn.Module, r: int, alpha: float, dropout: float,
             target_modules: list[str], seed: int) -> PeftModel:  # fmt: skip
    """Freeze `model` and attach LoRA adapters; the seed fixes A's random init for everyone."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in target_modules if t not in names]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                         if isinstance(m, torch.nn.Linear)})  # fmt: skip
        raise ValueError(
            f"LoRA target modules {missing} match no module; linear modules are: {linear}"
        )
    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules)
    return get_peft_model(model, config)


def get_adapter(model: PeftModel) -> Params:
    """A detached copy of the adapter tensors: exactly what a client sends."""
    state = get_peft_model_state_dict(model, save_embedding_layers=False)
    return {k: v.detach().clone() for k, v in state.items()}


def set_adapter(model: PeftModel, params: Params) -> None:
    result = _set(model, params)
    if result.unexpected_keys:
        raise KeyError(f"adapter has keys the model does not: {result.unexpected_keys[:3]}")


def full_state(model: PeftModel) -> Params:
    """Every weight of the underlying model: what full fine-tuning would have to send."""
    state = model.get_base_model().state_dict()
    return {k: v for k, v in state.items() if "lora_" not in k and k != "codebook"}
