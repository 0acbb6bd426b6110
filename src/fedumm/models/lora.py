"""LoRA through peft, and the adapter state-dict helpers the federation moves around.

An adapter is a dict of tensors keyed like peft's state dict (`<module>.lora_A.weight`,
`<module>.lora_B.weight`). Two extensions, both plain tensors in the same dict:
- several ranks in one model (one peft adapter per rank; the rank of the tensors picks it), for
  algorithms whose clients train different ranks;
- folded deltas, `fold/<module>`: a dense matrix added to that module's frozen weight, for
  algorithms that merge products of factors into the base model (FLoRA, FedEx-LoRA).
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from fedumm.models.quantization import as_full_precision, is_quantized

# transformers 5 warns each time peft asks a model about gradient checkpointing: not ours to fix.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")

Params = dict[str, torch.Tensor]
FOLD = "fold/"
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
FOLDED_WEIGHTS = "folded_deltas.safetensors"  # FLoRA's and FedEx-LoRA's changes to the base


def is_fold(key: str) -> bool:
    return key.startswith(FOLD)


def factor_of(key: str) -> str | None:
    """'lora_A' or 'lora_B' for a factor key, else None."""
    for factor in ("lora_A", "lora_B"):
        if f".{factor}." in key:
            return factor
    return None


def module_of(key: str) -> str:
    """The module path a factor or fold key belongs to."""
    return key[len(FOLD) :] if is_fold(key) else key.split(".lora_", 1)[0]


def factor_pairs(params: Params) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module -> (A, B) for every adapted module in `params`."""
    return {
        module_of(k): (v, params[k.replace(".lora_A.", ".lora_B.")])
        for k, v in params.items()
        if factor_of(k) == "lora_A"
    }


def effective_delta(params: Params, lora_alpha: float) -> dict[str, torch.Tensor]:
    """module -> fold + (alpha / r) * B A: what the adapter adds to each frozen weight."""
    delta = {m: (lora_alpha / a.shape[0]) * (b @ a) for m, (a, b) in factor_pairs(params).items()}
    for k, v in params.items():
        if is_fold(k):
            m = module_of(k)
            delta[m] = delta[m] + v if m in delta else v
    return delta


def _adapter_name(r: int, default_r: int) -> str:
    return "default" if r == default_r else f"rank{r}"


def linear_modules(model: torch.nn.Module, scope: str = "") -> dict[str, torch.nn.Linear]:
    """The linear modules LoRA may adapt: inside `scope` (a multimodal model's language model:
    `q_proj` also names vision-tower layers in some families) or the top-level lm_head."""
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and (n.startswith(scope) or n == "lm_head")
    }


def lora_targets(
    model: torch.nn.Module, target_modules: list[str], scope: str = ""
) -> dict[str, torch.nn.Linear]:
    """module path -> module, for the linear modules in `scope` named one of `target_modules`."""
    return {
        n: m
        for n, m in linear_modules(model, scope).items()
        if n.rsplit(".", 1)[-1] in target_modules
    }


def add_lora(
    model: torch.nn.Module,
    r: int,
    alpha: float,
    dropout: float,
    target_modules: list[str],
    seed: int,
    extra_ranks: tuple[int, ...] = (),
    scope: str = "",
    modules_to_save: list[str] | None = None,
) -> PeftModel:
    """Freeze `model` and attach LoRA adapters; the seed fixes A's random init for everyone.

    Targets are linear modules by name (see `lora_targets`). `extra_ranks` adds one more
    adapter per rank (for clients that train another rank); the adapter of rank `r` is the
    active one. `modules_to_save` are trained in full beside the adapters, and travel with
    them (e.g. Janus's generation head)."""
    targeted = lora_targets(model, target_modules, scope)
    known = sorted({n.rsplit(".", 1)[-1] for n in linear_modules(model, scope)})
    missing = [t for t in target_modules if t not in known]
    if missing:
        where = f" in {scope}" if scope else ""
        raise ValueError(
            f"LoRA target modules {missing} match no module{where}; its linear modules are: {known}"
        )
    smallest = min(targeted, key=lambda n: min(targeted[n].in_features, targeted[n].out_features))
    limit = min(targeted[smallest].in_features, targeted[smallest].out_features)
    for rank in (r, *extra_ranks):
        if rank > limit:
            layer = targeted[smallest]
            raise ValueError(
                f"LoRA rank {rank} exceeds what {smallest} ({layer.out_features}x"
                f"{layer.in_features}) allows; the largest useful rank is {limit}"
            )
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    unknown = sorted(set(modules_to_save or ()) - names)
    if unknown:
        raise ValueError(f"lora.modules_to_save {unknown} name no module of the model")
    torch.manual_seed(seed)
    paths = sorted(targeted)  # full paths: peft then adapts exactly these
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=paths,
        modules_to_save=modules_to_save,
    )
    peft_model = get_peft_model(model, config)
    for rank in sorted(set(extra_ranks) - {r}):
        torch.manual_seed(seed)
        peft_model.add_adapter(
            _adapter_name(rank, r),
            LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=paths),
        )
    peft_model.set_adapter("default")
    return peft_model


def get_adapter(model: torch.nn.Module) -> Params:
    """A detached copy of the active adapter's tensors, on the CPU wherever the model runs:
    exactly what a client sends. A plain (non-peft) model is fully fine-tuned: its trainable
    state is every weight."""
    return {k: v.detach().to("cpu", copy=True) for k, v in adapter_parameters(model).items()}


def initial_adapters(model: torch.nn.Module) -> dict[int, Params]:
    """rank -> the current tensors of the model's adapter of that rank (call before training);
    {0: every weight} for a fully fine-tuned model."""
    if not isinstance(model, PeftModel):
        return {0: get_adapter(model)}
    active, out = model.active_adapter, {}
    for name, config in model.peft_config.items():
        model.set_adapter(name)
        out[config.r] = get_adapter(model)
    model.set_adapter(active)
    return out


def adapter_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The live parameters of the active adapter, keyed like peft's state dict (and so like
    `get_adapter`). Found once per adapter, by matching peft's state dict to the parameters,
    and kept on the model: asking peft walks every module, which for LLaVA-1.5-7B's 2,006
    costs 24 ms a read and 63 ms a write on a CPU core, more than a short round on a GPU."""
    if not isinstance(model, PeftModel):
        return dict(model.named_parameters())
    cache = model.__dict__.setdefault("_fedumm_adapter_parameters", {})
    name = model.active_adapter
    if name not in cache:
        state = get_peft_model_state_dict(model, adapter_name=name, save_embedding_layers=False)
        owner = {(p.data_ptr(), p.shape): p for p in model.parameters()}
        stray = [k for k, v in state.items() if (v.data_ptr(), v.shape) not in owner]
        if stray:
            raise ValueError(
                f"adapter {name!r} holds {stray[0]!r}, which is not a parameter "
                "of the model: fedumm trains and sends parameters only"
            )
        cache[name] = {k: owner[v.data_ptr(), v.shape] for k, v in state.items()}
    return cache[name]


def set_adapter(model: torch.nn.Module, params: Params) -> None:
    """Load `params` as the complete adapter state: factors (their rank picks the peft adapter)
    and folded deltas; frozen weights without a fold in `params` are restored to the base.
    A fully fine-tuned model takes every weight."""
    if not isinstance(model, PeftModel):
        live = dict(model.named_parameters())
        if live.keys() != params.keys():
            raise KeyError(
                f"weights do not match the model: {sorted(live.keys() ^ params.keys())[:3]}"
            )
        with torch.no_grad():
            for k, v in params.items():
                live[k].copy_(v)
        return
    factors = {k: v for k, v in params.items() if not is_fold(k)}
    ranks = {v.shape[0] for k, v in factors.items() if factor_of(k) == "lora_A"}
    if len(ranks) > 1:
        raise ValueError(f"one adapter cannot mix ranks {sorted(ranks)}")
    if ranks:
        rank = ranks.pop()
        name = next((n for n, c in model.peft_config.items() if c.r == rank), None)
        if name is None:
            have = sorted(c.r for c in model.peft_config.values())
            raise ValueError(f"the model has no adapter of rank {rank} (it has ranks {have})")
        if model.active_adapter != name:  # peft's switch walks every module
            model.set_adapter(name)
    live = adapter_parameters(model)
    unexpected = sorted(factors.keys() - live.keys())
    if unexpected:
        raise KeyError(f"adapter has keys the model does not: {unexpected[:3]}")
    wrong = sorted(k for k in factors if factors[k].shape != live[k].shape)
    if wrong:  # copy_ would broadcast where loading a state dict refuses
        raise ValueError(
            f"adapter tensor {wrong[0]!r} has shape {tuple(factors[wrong[0]].shape)}"
            f", the model's is {tuple(live[wrong[0]].shape)}"
        )
    with torch.no_grad():
        for k, v in factors.items():
            live[k].copy_(v)
    _set_folds(model, {module_of(k): v for k, v in params.items() if is_fold(k)})


def _set_folds(model: PeftModel, folds: dict[str, torch.Tensor]) -> None:
    """Frozen weight = base weight + fold; the base weights are kept aside on first use."""
    base = getattr(model, "_fedumm_base_weights", None)
    if base is None:
        if not folds:
            return
        base = {}
        model._fedumm_base_weights = base
    with torch.no_grad():
        for module in folds.keys() - base.keys():
            base[module] = model.get_submodule(module).base_layer.weight.detach().clone()
        for module, weight in base.items():
            target = model.get_submodule(module).base_layer.weight
            fold = folds.get(module)
            target.copy_(weight if fold is None else weight + fold.to(weight.device))


def full_state(model: torch.nn.Module) -> Params:
    """Every weight of the underlying model, tied weights once: what full fine-tuning would
    have to send (a quantized base's weights at full precision, as meta tensors)."""
    if not isinstance(model, PeftModel):
        return get_adapter(model)
    out, seen, base = {}, set(), model.get_base_model()
    for k, v in base.state_dict().items():
        copy = "lora_" in k or "modules_to_save." in k  # the adapter's, not the base's
        if not copy and k != "codebook" and v.data_ptr() not in seen:
            seen.add(v.data_ptr())
            out[k] = v
    return as_full_precision(base, out) if is_quantized(base) else out


def save_pretrained(model: PeftModel, params: Params, folder: Path, base: str) -> Path:
    """`params` as peft saves an adapter (adapter_config.json, adapter_model.safetensors), so
    `PeftModel.from_pretrained(base_model, folder)` loads it; `base` is what the config names
    as its base model. Folded deltas (FLoRA, FedEx-LoRA) are dense changes to frozen weights,
    which no LoRA config expresses: they go beside, in folded_deltas.safetensors keyed by
    module, and only the base with them added (`load_pretrained`, `fedumm export --merge`)
    reproduces the model."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    factors = {k: v.contiguous() for k, v in params.items() if not is_fold(k)}
    ranks = {v.shape[0] for k, v in factors.items() if factor_of(k) == "lora_A"}
    name = next((n for n, c in model.peft_config.items() if c.r in ranks), model.active_adapter)
    config = copy.deepcopy(model.peft_config[name])
    config.base_model_name_or_path, config.inference_mode = base, True
    config.save_pretrained(str(folder))
    save_file(factors, folder / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    folds = {module_of(k): v.contiguous() for k, v in params.items() if is_fold(k)}
    (folder / FOLDED_WEIGHTS).unlink(missing_ok=True)
    if folds:
        save_file(folds, folder / FOLDED_WEIGHTS, metadata={"format": "pt"})
    return folder


def read_pretrained(folder: Path) -> tuple[dict, Params]:
    """(adapter config, params) of an adapter folder `save_pretrained` wrote (or peft did):
    the params keyed as `set_adapter` takes them, folded deltas included."""
    folder = Path(folder)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder}: no {name}; not a saved adapter")
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    params = load_file(folder / ADAPTER_WEIGHTS)
    if (folder / FOLDED_WEIGHTS).is_file():
        params.update({FOLD + k: v for k, v in load_file(folder / FOLDED_WEIGHTS).items()})
    return config, params
