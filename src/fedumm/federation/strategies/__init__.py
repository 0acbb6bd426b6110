"""FL algorithms by name. Add one: a short file with a Strategy subclass (its `Params` declare its
parameters), imported and listed below."""

from __future__ import annotations

from typing import Any

from fedumm.federation.strategies.base import FederationContext, Strategy
from fedumm.federation.strategies.dp_fedavg import DPFedAvg
from fedumm.federation.strategies.fedadagrad import FedAdagrad
from fedumm.federation.strategies.fedadam import FedAdam
from fedumm.federation.strategies.fedavg import FedAvg
from fedumm.federation.strategies.fedavgm import FedAvgM
from fedumm.federation.strategies.fedex_lora import FedExLoRA
from fedumm.federation.strategies.fednova import FedNova
from fedumm.federation.strategies.fedprox import FedProx
from fedumm.federation.strategies.fedsa_lora import FedSALoRA
from fedumm.federation.strategies.fedyogi import FedYogi
from fedumm.federation.strategies.ffa_lora import FFALoRA
from fedumm.federation.strategies.flora import FLoRA
from fedumm.federation.strategies.krum import Krum
from fedumm.federation.strategies.median import Median
from fedumm.federation.strategies.norm_clipping import NormClipping
from fedumm.federation.strategies.scaffold import Scaffold
from fedumm.federation.strategies.trimmed_mean import TrimmedMean

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        FedAvg,
        FedProx,
        FedAvgM,
        FedAdam,
        FedYogi,
        FedAdagrad,
        Scaffold,
        FedNova,
        FFALoRA,
        FedSALoRA,
        FLoRA,
        FedExLoRA,
        Median,
        TrimmedMean,
        Krum,
        NormClipping,
        DPFedAvg,
    )
}


def config_problems(cfg) -> list[tuple[str, str]]:
    """(config key, why) for what `cfg`'s algorithm cannot do, with the algorithms that can."""
    name = cfg.federation.strategy.name
    if name not in STRATEGIES:
        return [
            (
                "federation.strategy.name",
                f"unknown strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}",
            )
        ]
    problems = STRATEGIES[name].config_problems(cfg) + _frozen_base_problems(cfg)
    able = {
        "federation.secure_aggregation": ("strategies that can", "aggregates_weighted_mean"),
        "lora.client_ranks": ("use a strategy that mixes ranks", "mixed_ranks"),
    }
    out = []
    for key, why in problems:
        if key in able:
            label, flag = able[key]
            names = sorted(n for n, c in STRATEGIES.items() if getattr(c, flag))
            why += f"; {label}: {', '.join(names)}"
        out.append((key, why + _taken_by(name, key)))
    return out


def _frozen_base_problems(cfg) -> list[tuple[str, str]]:
    """What a base that is not whole and plain in each process cannot take: a strategy that
    writes its aggregate into the frozen weights, on a quantized base or one fsdp shards; and
    training the whole base (no lora section) when it is quantized."""
    name, quantization = cfg.federation.strategy.name, cfg.model.quantization
    problems = []
    if STRATEGIES[name].folds_into_base:
        if quantization != "none":
            able = sorted(n for n, c in STRATEGIES.items() if not c.folds_into_base)
            why = (
                f"{name} writes its aggregate into the frozen weights, which {quantization} stores"
            )
            problems.append(
                ("model.quantization", f"{why}; strategies that can: {', '.join(able)}")
            )
        if cfg.runtime.client_sharding == "fsdp":
            problems.append(
                (
                    "runtime.client_sharding",
                    f"{name} writes its aggregate into the frozen base weights, which fsdp "
                    "shards over the client's processes; use ddp",
                )
            )
    elif quantization != "none" and cfg.lora is None:
        problems.append(
            ("model.quantization", f"{quantization} weights cannot be fine-tuned in full: set lora")
        )
    return problems


def _taken_by(name: str, key: str) -> str:
    """For a parameter `name` does not take: which algorithms take it."""
    param = key.removeprefix("federation.strategy.")
    if param == key or param in STRATEGIES[name].Params.model_fields:
        return ""
    takers = sorted(n for n, c in STRATEGIES.items() if param in c.Params.model_fields)
    return f"; {', '.join(takers)} take{'s' if len(takers) == 1 else ''} it" if takers else ""


def build_strategy(
    name: str, context: FederationContext | None = None, **hyperparameters: Any
) -> Strategy:
    """The algorithm `name`, its parameters `hyperparameters` and its defaults for the others
    (a ValueError names each parameter it refuses)."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name](context, **hyperparameters)
