"""The frozen base quantized (QLoRA): `model.quantization` int8 or nf4 stores the language
model's linear weights in 8 or 4 bits through bitsandbytes, and LoRA trains fp32 adapters on
top through peft's own bitsandbytes layers.

bitsandbytes >= 0.50 trains through both kinds on the CPU as on CUDA (docs/results/
quantization.md measures it against torchao's int8 weight-only, the other CPU candidate), so
one backend serves every device fedumm runs on. What is quantized: the linear layers inside
the language model (`LoadedModel.lora_scope`), never lm_head (LoRA adapts it in the built-in
model; QLoRA leaves it unquantized too), nor a vision tower, projector or image tokenizer:
they are a small share of the weights and map pixels to codes that quantization noise would
move. An adapter trained on the quantized base is an ordinary
adapter: it loads onto the unquantized base (`fedumm eval`, `fedumm export --merge`).
"""

from __future__ import annotations

import torch

from fedumm.config import ConfigError

KEY = "model.quantization"
DEVICES = ("cpu", "cuda")  # where bitsandbytes >= 0.50 trains both kinds


def linears_to_quantize(model: torch.nn.Module, scope: str) -> dict[str, torch.nn.Linear]:
    """module path -> the plain linear layers quantization replaces: inside `scope`, lm_head
    excluded."""
    return {
        name: module
        for name, module in model.named_modules()
        if type(module) is torch.nn.Linear and name.startswith(scope) and name != "lm_head"
    }


def check_device(quantization: str, device: torch.device) -> None:
    """Refuse a device bitsandbytes has no training kernels for, naming the key."""
    if device.type not in DEVICES:
        raise ConfigError(
            f"{KEY}: {quantization} has no bitsandbytes kernels for {device.type} in fedumm "
            f"(it runs on {', '.join(DEVICES)}); set {KEY}: none"
        )


def quantized_linear(layer: torch.nn.Linear, quantization: str, device: torch.device):
    """A bitsandbytes layer holding `layer`'s weight in `quantization`, on `device`
    (bitsandbytes quantizes as the weight moves there); it computes in the weight's dtype."""
    import bitsandbytes as bnb

    weight = layer.weight.data.to("cpu")
    if quantization == "nf4":
        new = bnb.nn.Linear4bit(
            layer.in_features,
            layer.out_features,
            bias=layer.bias is not None,
            compute_dtype=weight.dtype,
            quant_type="nf4",
        )
        new.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
    else:
        new = bnb.nn.Linear8bitLt(
            layer.in_features,
            layer.out_features,
            bias=layer.bias is not None,
            has_fp16_weights=False,  # int8 storage; threshold 0: no fp16 outlier columns
        )
        new.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    if layer.bias is not None:
        new.bias = torch.nn.Parameter(layer.bias.data.clone(), requires_grad=False)
    return new.to(device)


def quantize(
    model: torch.nn.Module, quantization: str, scope: str, device: torch.device
) -> torch.nn.Module:
    """`model` with the linear layers `linears_to_quantize` names in `quantization`, on
    `device`, flagged as peft reads it (so LoRA wraps them in peft's bitsandbytes layers)."""
    check_device(quantization, device)
    for name, layer in linears_to_quantize(model, scope).items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, quantized_linear(layer, quantization, device))
    model.requires_grad_(False)
    flag = "is_loaded_in_4bit" if quantization == "nf4" else "is_loaded_in_8bit"
    setattr(model, flag, True)
    return model


def is_quantized(model: torch.nn.Module) -> bool:
    return getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)


def quantized_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """module path -> each bitsandbytes layer of `model` (peft's wrappers looked through)."""
    import bitsandbytes as bnb

    kinds = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    return {name: m for name, m in model.named_modules() if isinstance(m, kinds)}


def as_full_precision(model: torch.nn.Module, state: dict) -> dict:
    """`state` (of quantized `model`) with each quantized weight as the full-precision tensor
    it stands for, on the meta device (a shape and dtype, no data), and its codes' scales left
    out: what full fine-tuning of the base would send, as traffic comparisons count it."""
    dtype = model.get_input_embeddings().weight.dtype
    out = dict(state)
    for name, layer in quantized_layers(model).items():
        for key in [k for k in out if k.startswith(f"{name}.") and k != f"{name}.bias"]:
            del out[key]
        shape = (layer.out_features, layer.in_features)
        out[f"{name}.weight"] = torch.empty(shape, dtype=dtype, device="meta")
    return out
