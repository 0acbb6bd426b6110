"""The strategy interface: everything an FL algorithm decides, and nothing an engine does.

An algorithm has a server side and a client side. The server side keeps the server state
(momentum, moments, control variates), says what goes down to the clients (`broadcast`) and turns
the updates that came back into the next global adapter (`aggregate`). The client side runs where
the data is, with a per-client `state` dict that stays on that client between rounds: it says
where local training starts (`client_start`), how it is changed (`client_hooks`, `frozen`) and
what goes back up (`client_finish`); the state may hold other components' keys too
(`compression/residual/...`): a strategy reads only its own. Engines (embedded, NVIDIA FLARE)
only move the tensors these methods return; every method is a function of tensors, testable
without any engine.

The defaults are plain FedAvg behaviour: the whole adapter down, plain training, the trained
adapter up.

An algorithm's parameters are its own: its `Params` (a pydantic model) declares each with its
default, bounds and a one-line description; a config sets them beside the algorithm's name
(`federation.strategy: {name: fedprox, mu: 0.05}`) and the strategy reads them in `self.hp`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from fedumm.config import RunConfig
from fedumm.federation.update import ClientUpdate, Params
from fedumm.models.lora import is_fold
from fedumm.training import TrainingHooks


@dataclass(frozen=True)
class FederationContext:
    """What an algorithm may know about the federation besides tensors."""

    num_clients: int = 1
    lora_alpha: float = 1.0  # LoRA scale of a rank-r factor pair is lora_alpha / r
    client_ranks: dict[str, int] = field(default_factory=dict)  # only where ranks differ
    seed: int = 0  # the run seed
    seeded_noise: bool = False  # DP noise from the run seed (simulations that ask for it only)
    client_sampling: str = "random"  # how the server draws a round's clients: random or cyclic


class StrategyParams(BaseModel):
    """An algorithm's parameters, each a field with its default, bounds and description; an
    algorithm declares its own subclass as `Params` (this one: none)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ParamsError(ValueError):
    """Parameters an algorithm refuses: `problems` holds (config key, why) for each."""

    def __init__(self, problems: list[tuple[str, str]]):
        super().__init__("; ".join(f"{key}: {why}" for key, why in problems))
        self.problems = problems


class Strategy(ABC):
    name: ClassVar[str]
    paper: ClassVar[str] = ""
    Params: ClassVar[type[StrategyParams]] = StrategyParams  # the parameters it reads
    frozen: ClassVar[tuple[str, ...]] = ()  # adapter factors clients do not train ("lora_A")
    personalized: ClassVar[bool] = False  # True: each client's model differs from the global one
    mixed_ranks: ClassVar[bool] = False  # True: aggregates adapters of different ranks
    needs_lora: ClassVar[bool] = False  # True: works on LoRA factors (no full fine-tuning)
    # True: writes its aggregate into the frozen base weights (folded deltas), so every
    # client needs the whole base, unquantized, in one process
    folds_into_base: ClassVar[bool] = False
    state_attrs: ClassVar[tuple[str, ...]] = ()  # server state: attributes holding tensor dicts
    # upload keys starting with one of these travel exactly (fp32), whatever compression is set
    exact_prefixes: ClassVar[tuple[str, ...]] = ()
    # what federation.compression compresses of its messages (`fedumm strategies` says it)
    compresses: ClassVar[str] = "the adapter's change up, the adapter down"
    # True: aggregate() depends on the updates only through their sample-weighted mean, so it
    # can run on the one mean that secure aggregation reveals.
    aggregates_weighted_mean: ClassVar[bool] = False

    def __init__(self, context: FederationContext | None = None, **hyperparameters: Any):
        self.context = context or FederationContext()
        self.hp = self.checked_params(hyperparameters).model_dump()

    @classmethod
    def checked_params(cls, given: Mapping[str, Any]) -> StrategyParams:
        """`given` with the defaults of the others; a ParamsError names each key `Params`
        refuses: one this algorithm does not have, or a value outside its bounds."""
        try:
            return cls.Params.model_validate(dict(given))
        except ValidationError as e:
            raise ParamsError([cls._params_problem(error) for error in e.errors()]) from None

    @classmethod
    def _params_problem(cls, error: Any) -> tuple[str, str]:
        param = ".".join(str(part) for part in error["loc"])
        key = f"federation.strategy.{param}" if param else "federation.strategy"
        if error["type"] == "extra_forbidden":
            takes = ", ".join(cls.Params.model_fields) or "none"
            return key, f"{cls.name} has no parameter {param!r}; its parameters: {takes}"
        return key, error["msg"]

    @classmethod
    def config_problems(cls, cfg: RunConfig) -> list[tuple[str, str]]:
        """(config key, why) for each thing `cfg` asks that this algorithm cannot do; an
        algorithm with rules of its own extends the list."""
        problems = []
        try:
            cls.checked_params(cfg.federation.strategy.hyperparameters())
        except ParamsError as e:
            problems += e.problems
        if cfg.federation.secure_aggregation.enabled and not cls.aggregates_weighted_mean:
            problems.append(("federation.secure_aggregation", cls.secure_aggregation_refusal()))
        if cfg.lora is None and cls.needs_lora:
            problems.append(
                (
                    "lora",
                    f"{cls.name} aggregates LoRA factors; with lora: null (full "
                    "fine-tuning) choose a strategy that does not",
                )
            )
        ranks = cfg.lora.client_ranks if cfg.lora else None
        if ranks is not None and set(ranks) != {cfg.lora.r} and not cls.mixed_ranks:
            problems.append(
                (
                    "lora.client_ranks",
                    f"they differ from lora.r but {cls.name} averages factors of one shape",
                )
            )
        return problems + cls.compression_problems(cfg)

    @classmethod
    def compression_problems(cls, cfg: RunConfig) -> list[tuple[str, str]]:
        """(config key, why) for each federation.compression setting this algorithm cannot
        use (none by default: it compresses its upload's change and its broadcast)."""
        return []

    @classmethod
    def secure_aggregation_refusal(cls) -> str:
        return (
            f"secure aggregation reveals only the weighted mean of the updates, which "
            f"{cls.name} cannot aggregate from"
        )

    def state_dict(self) -> Params:
        """The server state as flat tensors ('<attr>/<key>'), for checkpoints."""
        return {f"{a}/{k}": v for a in self.state_attrs for k, v in getattr(self, a).items()}

    def load_state_dict(self, state: Params) -> None:
        for a in self.state_attrs:
            prefix = f"{a}/"
            setattr(
                self, a, {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            )

    # ---- server side -------------------------------------------------------------------------
    def broadcast(self, global_params: Params) -> Params:
        """The message every sampled client receives this round."""
        return global_params

    def upload_reference(self, message: Params) -> Params:
        """What a client's upload is a change from, key by key: the values it was sent of the
        tensors it sends back. A compressed upload travels as that change (keys missing here
        travel as they are), and the server adds the change to its own exact copy."""
        return {k: v for k, v in message.items() if not is_fold(k)}

    def upload_template(self, global_params: Params, client_id: str) -> Params:
        """Keys, shapes and dtypes a client's upload must have; the server refuses others."""
        return {k: v for k, v in global_params.items() if not is_fold(k)}

    @abstractmethod
    def aggregate(self, global_params: Params, updates: list[ClientUpdate]) -> Params:
        """The next global adapter from the current one and the validated client updates."""

    def summary(self, sampled_per_round: int) -> dict:
        """Anything the algorithm adds to results.json after the rounds (e.g. privacy spent)."""
        return {}

    # ---- client side -------------------------------------------------------------------------
    def client_start(self, message: Params, state: Params, initial: Params) -> Params:
        """The adapter local training starts from; `initial` is this client's fresh adapter."""
        return message

    def client_hooks(
        self, model: torch.nn.Module, message: Params, state: Params
    ) -> TrainingHooks | None:
        """How this algorithm changes a client's local training; None leaves it plain."""
        return None

    def client_finish(
        self, message: Params, trained: Params, state: Params, hooks: TrainingHooks | None
    ) -> Params:
        """What the client sends back; may update `state`, which stays on the client."""
        return trained

    def personal_adapter(self, global_params: Params, state: Params) -> Params:
        """The model a client actually uses (personalized algorithms only)."""
        return global_params


def sample_weights(updates: list[ClientUpdate]) -> list[float]:
    """p_k = n_k / sum n: each client's share of the round's samples."""
    total = sum(u.num_samples for u in updates)
    return [u.num_samples / total for u in updates]


def weighted_average(tensors: list[Params], weights: list[float]) -> Params:
    keys = tensors[0].keys()
    return {k: sum(w * t[k] for w, t in zip(weights, tensors)) for k in keys}


def pseudo_gradient(global_params: Params, updates: list[ClientUpdate]) -> Params:
    """Delta = sum_k p_k (theta_k - theta): the FedAvg step, the input of every server optimizer."""
    mean = weighted_average([u.params for u in updates], sample_weights(updates))
    return {k: mean[k] - global_params[k] for k in mean}
