"""Server strategies by name. Add one: a file with a Strategy subclass, and a line below."""

from __future__ import annotations

from fedumm.federation.strategies.base import Strategy
from fedumm.federation.strategies.fedavg import FedAvg

STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (FedAvg,)}


def build_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name]()
