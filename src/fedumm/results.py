"""results.json as one typed record, `RunResult`: what `fedumm run` writes, and what the report,
sweeps, benchmarks, trackers and `fedumm eval` read (as attributes: a renamed key fails here,
naming the file and the key, instead of breaking a page silently).

The file's format is unchanged: a result loaded and dumped again is the same text, keys in the
order they were read (older files, whose sections lack keys added since, load and dump as they
were). Keys a section does not declare are kept and written back. Metrics (task -> numbers, and
breakdowns such as per_family) stay mappings: their keys are the tasks' own (evaluation.metrics
HEADLINES names them).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from fedumm.config import RunConfig, without_retired

Metrics = dict[str, Any]  # headline -> number, breakdown -> {category: number}, as tasks write


class ResultsError(ValueError):
    """A results.json that is not one: says which file and which key."""


def dump_json(obj) -> str:
    """JSON indented for reading, with lists of numbers on one line (a 100,000-client
    partition stays megabytes, not tens of them)."""
    text = json.dumps(obj, indent=2)
    # An indented list opens with "[" and a line break, which no JSON string holds (it would
    # be written \n): only lists of the document itself are joined, never text inside a string.
    return re.sub(r"\[\n[\d\s,.eE+-]*\]", lambda m: re.sub(r"\s+", "", m.group()), text)


class Record(BaseModel):
    """A section of results.json: declared keys typed, others kept; written back in the order
    its keys were read (or, built in code, declared), without the defaults it was not given."""

    model_config = ConfigDict(extra="allow")
    _order: tuple[str, ...] = PrivateAttr(default=())

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        self._order = ()  # built in code, by keyword: written in the declared order

    @model_validator(mode="wrap")
    @classmethod
    def _keep_order(cls, data: Any, handler):
        record = handler(data)
        if isinstance(data, dict):
            record._order = tuple(data)
        return record

    @classmethod
    def of(cls, value):
        """`value` as this record: itself, or a mapping validated (`from_dict`)."""
        return value if isinstance(value, cls) else cls.from_dict(value)

    @classmethod
    def from_dict(cls, data: dict, source: str = "results"):
        """`data` validated; a missing or mistyped key raises ResultsError naming `source` and
        the key's path (e.g. rounds.0.bytes_up)."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ResultsError(_describe(e, source)) from None

    def to_dict(self) -> dict:
        """The plain mapping results.json holds."""
        values = {name: getattr(self, name) for name in self.model_fields_set}
        values.update(self.__pydantic_extra__ or {})
        declared = [name for name in type(self).model_fields if name not in self._order]
        keys = dict.fromkeys([*self._order, *declared, *values])
        return {key: _plain(values[key]) for key in keys if key in values}


def _plain(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"{source}: not a fedumm results file:"]
    for e in error.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {key}: {e['msg']}")
    return "\n".join(lines)


# ---- rounds ------------------------------------------------------------------------------------
class ClientRound(Record):
    """What a client reported of its local work in a round (a remote client's report may
    lack what the server did not ask of it)."""

    loss: float | None = None
    train_seconds: float | None = None
    steps: int
    pid: int | None = None  # engines whose clients run in processes of their own
    device: str | None = None
    processes: int | None = None  # that trained the client together (runtime.client_devices)


class Rejection(Record):
    client_id: str
    reason: str


class RoundResult(Record):
    """One round of results.json's `rounds` (federation.server.RoundRecord, as stored)."""

    round: int
    clients: list[str]  # sampled
    metrics: Metrics  # the global model's; empty in rounds not evaluated (eval.every)
    bytes_up: int
    bytes_down: int
    seconds: float
    train_seconds: float
    eval_seconds: float
    client_metrics: dict[str, ClientRound] = {}
    rejected: list[Rejection] = []
    dropped: list[str] = []
    late: list[str] = []
    aborted: str | None = None  # why the round left the global model as it was
    secagg_bytes: int = 0  # of bytes_up + bytes_down: secure aggregation's key protocol


# ---- baselines ---------------------------------------------------------------------------------
class Scores(Record):
    metrics: Metrics


class ClientScores(Record):
    client_id: str
    metrics: Metrics


class LocalBaseline(Scores):
    """Each client trained alone: `metrics` their spread (mean, _std, _min, _max)."""

    clients: list[ClientScores]


class Baselines(Record):
    zero_shot: Scores | None = None
    local: LocalBaseline | None = None
    centralized: Scores | None = None

    def present(self) -> dict[str, Scores]:
        """name -> scores of the baselines that ran."""
        ran = {name: getattr(self, name) for name in type(self).model_fields}
        return {name: scores for name, scores in ran.items() if scores is not None}


# ---- what the run was --------------------------------------------------------------------------
class ModelInfo(Record):
    """The base model: its family, name and checksum (sweeps match finished runs on it)."""

    family: str | None = None
    name: str | None = None
    sha256: str | None = None
    random_weights: str | None = None  # `fedumm random-model`'s preset: no real model


class RuntimeInfo(Record):
    """Where the run ran."""

    device: str
    device_name: str | None = None
    precision: str
    gradient_checkpointing: bool = False
    micro_batch_size: int | None = None
    threads: int | None = None  # CPU runs
    devices: list[str] | None = None  # the round's clients trained in parallel on these


class Communication(Record):
    """Measured adapter traffic against what full fine-tuning would serialize."""

    adapter_message_bytes: int
    full_model_message_bytes: int
    adapter_bytes_per_round: float
    full_finetune_bytes_per_round: float
    ratio: float
    total_bytes: int
    trainable_parameters: int
    total_parameters: int


class TaskData(Record):
    """What a task read: `data` of results.json, per task."""

    source: str
    train_samples: int
    test_samples: int | None = None
    test_prompts: int | None = None  # generation
    classes: list[str] | None = None  # classification
    skipped_images: list[str] | None = None


class SetupSeconds(Record):
    """Where the time before round 1 went."""

    model: float
    data: float
    partition: float

    @property
    def total(self) -> float:
        return self.model + self.data + self.partition


# ---- partition (also partition.json) -----------------------------------------------------------
class TaskShare(Record):
    samples: int
    label_histogram: dict[str, int]
    modalities: dict[str, int] | None = None  # classification under a modality scenario


class PartitionClient(Record):
    client_id: str
    samples: int
    tasks: dict[str, TaskShare]


class LabelCells(Record):
    """A task's (client, label, count) cells: clients x labels counts, sparse."""

    client: list[int]
    label: list[int]
    count: list[int]


class ClientArrays(Record):
    """Beyond partition_report.SUMMARY_CLIENTS clients: every client's figures as arrays."""

    samples: list[int]
    label_counts: dict[str, LabelCells]
    modalities: dict[str, list[int]] | None = None


class Repair(Record):
    clients: int
    samples_moved: int


class PartitionSummary(Record):
    """Per client and task: samples, label counts, modalities kept (results.json's
    `partition`, and partition.json). `clients` up to SUMMARY_CLIENTS, else `client_arrays`."""

    scheme: str | None = None
    alpha: float | None = None
    description: str
    keys: dict[str, str]  # task -> the label it is split by
    labels: dict[str, list[str]]
    repaired: dict[str, Repair] = {}  # task -> what a Dirichlet split moved to mend clients
    modality: str | None = None  # the modality scenario, described
    clients: list[PartitionClient] | None = None
    client_arrays: ClientArrays | None = None


# ---- optional sections -------------------------------------------------------------------------
class Attack(Record):
    kind: str
    magnitude: float
    clients: list[str]  # the malicious ones


class PrivacySpent(Record):
    """An (epsilon, delta) guarantee; epsilon None: none (no noise)."""

    epsilon: float | None
    delta: float
    noise_multiplier: float
    clip_norm: float


class ClientLevelPrivacy(PrivacySpent):
    """DP-FedAvg's (the strategy's summary): the accountant over the rounds."""

    sample_rate: float
    rounds: int
    accountant: str
    sampling: str | None = None  # how clients were drawn, as the accounting assumes


class ClientSteps(Record):
    steps: int
    epsilon: float | None


class SampleLevelPrivacy(PrivacySpent):
    """DP-SGD's: the largest epsilon over clients, and each client's."""

    per_client: dict[str, ClientSteps]


class FlareInfo(Record):
    env: str
    server_pid: int


class FlowerInfo(Record):
    server_pid: int


# ---- the run -----------------------------------------------------------------------------------
class RunResult(Record):
    """A finished run, as results.json holds it (keys in this order)."""

    config: dict[str, Any]  # the resolved RunConfig as stored; `run_config()` validates it
    model: ModelInfo = Field(default_factory=ModelInfo)
    runtime: RuntimeInfo | None = None
    baselines: Baselines = Field(default_factory=Baselines)
    attack: Attack | None = None
    rounds: list[RoundResult]
    final: Scores
    dp_sgd: SampleLevelPrivacy | None = None
    privacy: ClientLevelPrivacy | None = None  # strategy summary (dp_fedavg)
    communication: Communication
    partition: PartitionSummary
    data: dict[str, TaskData] = {}
    wall_seconds: float
    setup_seconds: SetupSeconds | None = None
    flare: FlareInfo | None = None  # engine info: the FLARE server's
    flower: FlowerInfo | None = None  # engine info: the Flower ServerApp's
    _run_config: RunConfig | None = PrivateAttr(default=None)

    @classmethod
    def load(cls, path: str | Path) -> RunResult:
        """results.json at `path`; one that is not JSON or lacks a key raises ResultsError."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ResultsError(f"{path}: not JSON: {e}") from None
        if not isinstance(data, dict):
            raise ResultsError(f"{path}: not a fedumm results file: a JSON object is expected")
        return cls.from_dict(data, str(path))

    def dump(self) -> str:
        """The text of results.json."""
        return dump_json(self.to_dict())

    def run_config(self) -> RunConfig:
        """The stored config validated (keys since retired dropped), once; a ValueError if it
        no longer is one (or names a folder, such as secure aggregation's identities, that is
        no longer there)."""
        if self._run_config is None:
            self._run_config = RunConfig.model_validate(without_retired(self.config))
        return self._run_config

    @property
    def evaluated(self) -> list[RoundResult]:
        """The rounds whose global model was scored."""
        return [r for r in self.rounds if r.metrics]


class EvalResult(Record):
    """`fedumm eval`'s eval.json: a finished run's model scored without training."""

    run: str  # the run's folder
    client: str | None = None  # a personalized run's client, or the global model
    config: dict[str, Any]  # the config naming the data scored on
    metrics: Metrics
    data: dict[str, TaskData]
    zero_shot: Metrics | None = None  # the base alone (--baseline zero_shot)
    wall_seconds: float
