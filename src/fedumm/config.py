"""Run and pretraining configs: YAML files validated by pydantic schemas.

Every field has a default and a one-line description (`fedumm run --help` and the YAML files in
`configs/` show them); an unknown key, a wrong type or an impossible value is refused before any
work starts, with the dotted name of the key.
"""

from __future__ import annotations

import copy
import logging
import math
import re
from functools import partial
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

log = logging.getLogger("fedumm")

# ShapesWorld's question families (fedumm.data.shapesworld asks them); here so a pretraining config
# can name them without the config importing the data layer above it.
FAMILIES = ("existence", "color", "shape", "count", "spatial", "yesno")


def check_families(families: list[str] | tuple[str, ...]) -> None:
    """Refuse an empty or unknown choice of question families, naming the known ones."""
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown or not families:
        raise ValueError(f"unknown question families {unknown}; known: {', '.join(FAMILIES)}")


class ConfigError(ValueError):
    """A config that cannot be run; the message names the file and the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class GenerationDataConfig(Section):
    train_samples: int = Field(
        6000, gt=0, description="Prompt-image training pairs pooled over clients."
    )
    test_prompts_per_tag: int = Field(
        24, ge=1, description="Distinct evaluation prompts per GenEval tag (fewer if fewer exist)."
    )
    metadata: str | None = Field(
        None, description="A GenEval metadata JSONL to evaluate on instead; null = generated."
    )
    prompt_dropout: float = Field(
        0.0, ge=0, lt=1, description="Share of training prompts emptied (for guidance)."
    )


COLUMN_ROLES = ("image", "question", "answer", "family", "text", "label")


class HFDatasetSpec(Section):
    """A Hugging Face `datasets` data set on disk and which of its columns is what."""

    path: str | None = Field(
        None, description="save_to_disk folder, parquet folder, or image folder (train/, test/)."
    )
    format: Literal["auto", "disk", "parquet", "imagefolder"] = Field(
        "auto", description="How it is stored; auto = from the files in `path`."
    )
    train_split: str = Field("train", description="Split the clients train on.")
    test_split: str = Field("test", description="Split the global model is scored on.")
    columns: dict[str, str] = Field(
        {
            "image": "image",
            "question": "question",
            "answer": "answer",
            "text": "text",
            "label": "label",
        },
        description="Role -> column: image, question, answer (VQA; family optional), text, "
        "label (classification).",
    )

    @field_validator("columns")
    @classmethod
    def _known_roles(cls, columns: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(columns) - set(COLUMN_ROLES))
        if unknown:
            raise ValueError(f"unknown column role {unknown}; roles: {', '.join(COLUMN_ROLES)}")
        return columns


class ClassificationDataConfig(Section):
    source: Literal["shapesworld", "hateful_memes", "crisismmd", "hf_dataset"] = Field(
        "shapesworld",
        description="Generated incident reports, a public dataset's files under `root`, or a "
        "Hugging Face data set (`hf_dataset`).",
    )
    root: str | None = Field(
        None, description="hateful_memes / crisismmd: the dataset folder (images relative to it)."
    )
    train_file: str | None = Field(
        None, description="Training file relative to root; null = the dataset's usual name."
    )
    test_file: str | None = Field(
        None, description="Test file relative to root; null = the dataset's usual name."
    )
    train_samples: int = Field(
        4000, gt=0, description="Training samples pooled over clients (files: the first N)."
    )
    test_samples: int = Field(
        400, gt=0, description="Test samples, always with both modalities (files: the first N)."
    )
    agnostic_prompt: bool = Field(
        False, description="FedMLLM's modality-agnostic prompt: one instruction for any modalities."
    )
    hf_dataset: HFDatasetSpec = Field(
        default_factory=HFDatasetSpec, description="The data set (source: hf_dataset)."
    )

    @model_validator(mode="after")
    def _files_need_a_root(self) -> ClassificationDataConfig:
        if self.source == "hf_dataset":
            if self.hf_dataset.path is None:
                raise ValueError("source 'hf_dataset' needs hf_dataset.path")
        elif self.source != "shapesworld" and self.root is None:
            raise ValueError(f"source {self.source!r} needs root (the dataset folder)")
        return self


class VQAv2DataConfig(Section):
    root: str | None = Field(
        None, description="Folder with the VQA v2 question / annotation JSONs and image folders."
    )
    train_subtype: str = Field("train2014", description="Subtype the clients train on.")
    test_subtype: str = Field("val2014", description="Subtype the global model is scored on.")


class DataConfig(Section):
    kind: Literal["shapesworld", "vqa_v2", "hf_dataset"] = Field(
        "shapesworld",
        description="VQA data: the built-in world, VQA v2's files, or a Hugging Face data set.",
    )
    tasks: list[Literal["vqa", "generation", "classification"]] = Field(
        ["vqa"],
        min_length=1,
        description="What the federation learns: VQA, generation, classification, or a mix.",
    )
    train_samples: int = Field(
        20000, gt=0, description="VQA training samples pooled over clients (VQA v2: the first N)."
    )
    test_samples: int = Field(
        600, gt=0, description="VQA test samples (disjoint scenes; VQA v2: the first N)."
    )
    vqa_v2: VQAv2DataConfig = Field(
        default_factory=VQAv2DataConfig, description="VQA v2's files (kind: vqa_v2)."
    )
    hf_dataset: HFDatasetSpec = Field(
        default_factory=HFDatasetSpec, description="The VQA data set (kind: hf_dataset)."
    )
    families: list[Literal["existence", "color", "shape", "count", "spatial", "yesno"]] = Field(
        ["existence", "color", "shape", "count", "spatial", "yesno"],
        min_length=1,
        description="Question families to include, in equal shares.",
    )
    generation: GenerationDataConfig = Field(
        default_factory=GenerationDataConfig, description="Text-to-image task (GenEval-style)."
    )
    classification: ClassificationDataConfig = Field(
        default_factory=ClassificationDataConfig,
        description="Multimodal classification task (CrisisMMD-style incident reports).",
    )

    @model_validator(mode="after")
    def _vqa_v2_needs_a_root(self) -> DataConfig:
        if self.kind == "vqa_v2" and self.vqa_v2.root is None:
            raise ValueError("kind 'vqa_v2' needs vqa_v2.root (the dataset folder)")
        if self.kind == "hf_dataset" and self.hf_dataset.path is None:
            raise ValueError("kind 'hf_dataset' needs hf_dataset.path")
        return self

    @field_validator("tasks")
    @classmethod
    def _distinct(cls, tasks: list[str]) -> list[str]:
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"each task at most once, got {tasks}")
        return tasks


class ModalityConfig(Section):
    scenario: Literal["aligned", "missing", "cross", "hybrid"] = Field(
        "aligned", description="FedMLLM's modality scenario for the classification clients."
    )
    drop_probability: float = Field(
        0.3, ge=0, le=1, description="missing: beta, each modality dropped per sample with it."
    )
    image_only_clients: int = Field(
        5, ge=0, description="cross: k clients keep only images, the others only text."
    )
    presence_probability: float = Field(
        0.8, ge=0, le=1, description="hybrid: p, each client keeps each modality with it."
    )

    def describe(self) -> str:
        if self.scenario == "missing":
            return f"missing modality (beta={self.drop_probability})"
        if self.scenario == "cross":
            return f"cross-modal ({self.image_only_clients} image-only clients)"
        if self.scenario == "hybrid":
            return f"hybrid modality (p={self.presence_probability})"
        return "aligned modalities"


class PartitionConfig(Section):
    scheme: Literal["iid", "dirichlet", "quantity", "shards"] = Field(
        "dirichlet", description="Label skew (dirichlet, shards), size skew (quantity) or none."
    )
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration; smaller is more skewed.")
    quantity_law: Literal["dirichlet", "power"] = Field(
        "dirichlet", description="quantity: client shares ~ Dirichlet(alpha) or a power law."
    )
    power_exponent: float = Field(
        1.5, gt=0, description="quantity with power law: the k-th largest share ~ k^-exponent."
    )
    shards_per_client: int = Field(
        2, ge=1, description="shards: label-sorted shards per client (about its label count)."
    )
    key: Literal["answer", "family"] = Field("answer", description="VQA label the skew is over.")
    generation_key: Literal["tag", "class"] = Field(
        "tag", description="Generation label the skew is over: GenEval tag or object class."
    )
    min_samples: int = Field(20, ge=1, description="Each client gets at least this many samples.")
    modality: ModalityConfig = Field(
        default_factory=ModalityConfig,
        description="Which modalities classification samples keep (test: always both).",
    )
    client_tasks: list[Literal["vqa", "generation", "classification", "both"]] | None = Field(
        None,
        description="Tasks per client, cycled from site-1 ([vqa, generation]); null = all.",
    )

    def describe(self) -> str:
        """The scheme and the parameters it uses, e.g. 'dirichlet (alpha=0.5)'."""
        if self.scheme == "dirichlet":
            return f"dirichlet (alpha={self.alpha})"
        if self.scheme == "quantity":
            law = (
                f"Dirichlet alpha={self.alpha}"
                if self.quantity_law == "dirichlet"
                else f"power law, exponent {self.power_exponent}"
            )
            return f"quantity skew ({law})"
        if self.scheme == "shards":
            return f"shards ({self.shards_per_client} per client)"
        return "iid"


class ModelConfig(Section):
    foundation: str = Field(
        "builtin",
        description="A shipped foundation (builtin = assistant-v2, assistant, captioner) or a "
        "folder written by `fedumm pretrain`.",
    )
    name_or_path: str | None = Field(
        None, description="A Hugging Face image-text-to-text model (folder or hub id) instead."
    )
    family: str = Field("auto", description="Its family; auto = read from its config.json.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype of its frozen base weights (bf16/fp16 halve memory)."
    )
    quantization: Literal["none", "int8", "nf4"] = Field(
        "none",
        description="The frozen base's language-model linears (lm_head excepted) stored in int8 "
        "or nf4 through bitsandbytes, on CPU or CUDA (QLoRA; pip install "
        "'fedumm[quantization]'); LoRA adapters stay fp32 and load onto the unquantized base. "
        "Not with flora, fedex_lora or lora: null.",
    )


class LoraSection(Section):
    r: int = Field(4, ge=1, description="LoRA rank.")
    alpha: float = Field(8.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | None = Field(
        None,
        min_length=1,
        description="Module names that get adapters, in the language model only; null = every "
        "linear + lm_head (built-in), attention q/k/v/o (Hugging Face models).",
    )
    client_ranks: list[int] | None = Field(
        None, description="Per-client ranks, site-1 first (only flora mixes ranks); null = r."
    )
    modules_to_save: list[str] | None = Field(
        None,
        description="Modules trained in full and sent with the adapter (peft's modules_to_save), "
        "e.g. Janus's [generation_head, generation_aligner]; null = LoRA only.",
    )

    @field_validator("client_ranks")
    @classmethod
    def _positive(cls, ranks: list[int] | None) -> list[int] | None:
        if ranks is not None and min(ranks, default=1) < 1:
            raise ValueError(f"every rank must be >= 1, got {ranks}")
        return ranks


class StrategyConfig(Section):
    """The algorithm by name, and its parameters beside the name: `{name: fedprox, mu: 0.05}`.
    Which parameters an algorithm takes, their defaults and bounds are its own (its `Params`,
    listed by `fedumm strategies`): they are checked against it right after this schema
    (fedumm.validation), as the algorithms lie above the schema. A parameter set to null takes
    the algorithm's default (configs written before the algorithms owned their parameters list
    all twelve, null where unset)."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(
        "fedavg",
        description="FL algorithm; its parameters are set beside the name (`fedumm strategies`).",
    )

    @model_validator(mode="before")
    @classmethod
    def _null_is_the_default(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None or k == "name"}
        return data

    def hyperparameters(self) -> dict[str, Any]:
        """The parameters set in the config (the algorithm fills in the others)."""
        return dict(self.model_extra or {})


class AdaptiveRegularizationConfig(Section):
    enabled: bool = Field(
        False, description="FedMLLM's proximal term on the middle layers' adapters (any strategy)."
    )
    mu: float = Field(0.01, ge=0, description="Proximal strength mu (FedMLLM: 0.01).")
    weight: float = Field(0.1, ge=0, description="Extra weight w on the term (FedMLLM: 0.1).")
    skip_layers: int = Field(
        1, ge=0, description="s: the term covers layers s..L-1-s (FedMLLM: 4 of 28-32 layers)."
    )


class DPSGDConfig(Section):
    enabled: bool = Field(
        False, description="Sample-level DP-SGD in every client's local training (Opacus)."
    )
    clip_norm: float = Field(1.0, gt=0, description="Per-sample gradient norm bound C.")
    noise_multiplier: float = Field(
        1.0, ge=0, description="Noise standard deviation / C, per step."
    )
    target_delta: float = Field(1e-5, gt=0, lt=1, description="delta the epsilon is reported for.")


class SecureAggregationConfig(Section):
    """Bonawitz et al.'s protocol (federation/secure_aggregation.py): keys agreed by X25519,
    masks from AES-CTR, self-masks, and Shamir shares that recover the dropped clients' masks."""

    enabled: bool = Field(False, description="Clients upload masked updates.")
    threshold: int | None = Field(
        None,
        ge=2,
        description="Survivors a round needs to unmask (Shamir's t); fewer abort the round. "
        "null = a majority of the round's sampled clients.",
    )

    allow_minority: bool = Field(
        False,
        description="Accept a threshold of half the round's clients or fewer (a server that "
        "splits the clients could then learn one's update); a warning says so.",
    )
    signed_keys: bool = Field(
        False,
        description="Clients sign their keys with their site identity and check every peer's, "
        "so a server that substitutes keys is caught.",
    )
    identities: str | None = Field(
        None,
        description="signed_keys: folder of site identities (`fedumm identities`, or FLARE's "
        "provisioned kits); null = made for the run (FLARE POC: its provisioned kits).",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_bool(cls, value: Any) -> Any:
        return {"enabled": value} if isinstance(value, bool) else value

    def survivors_needed(self, sampled: int) -> int:
        """t for a round of `sampled` clients."""
        return self.threshold if self.threshold is not None else max(2, sampled // 2 + 1)


# What secure aggregation cannot carry of an upload compression, and why (int8 / int4 go into
# the masked field as integers: federation/compression/masked.py)
MASKED_REFUSALS = {
    "fp16": "a float's exponent cannot be summed under masks; int8 or int4 go into the masked "
    "field as integers",
    "bf16": "a float's exponent cannot be summed under masks; int8 or int4 go into the masked "
    "field as integers",
    "sign": "signs of different scales do not add up under masks; int8 or int4 go into the "
    "masked field as integers of one scale",
    "topk": "masked sparse uploads add up only where every client chose the same indices: the "
    "server would need the union of indices, which reveals what each client kept; use int8 or "
    "int4",
}


class CodecConfig(Section):
    """How one direction's messages are compressed (federation/compression/): a cast to 16-bit
    floats, blockwise integer quantization with a scale per block, or top-k sparsification
    whose kept values travel in any of the others. Uploads are compressed as the change from
    what the client received; the broadcast as the model itself."""

    scheme: Literal["none", "fp16", "bf16", "int8", "int4", "sign", "topk"] = Field(
        "none",
        description="none (fp32), fp16 / bf16, int8 / int4 (blockwise, a scale per block), sign "
        "(1 bit a value and a scale per block: use with error_feedback), or "
        "topk (the largest values of each tensor, with their indices).",
    )
    fraction: float = Field(
        0.1, gt=0, le=1, description="topk: share of each tensor's values sent, in (0, 1]."
    )
    values: Literal["fp32", "fp16", "bf16", "int8", "int4"] = Field(
        "fp32", description="topk: how the kept values travel (int8/int4: blockwise)."
    )
    block_size: int = Field(
        64, description="int8/int4/sign: values per scale, a power of two from 8 to 65536."
    )
    rounding: Literal["stochastic", "nearest"] = Field(
        "stochastic",
        description="int8/int4: round up or down at random in proportion (unbiased; seeded by "
        "the run seed, round and client), or to the nearest level.",
    )
    error_feedback: bool = Field(
        False,
        description="Uploads: each client keeps what compression dropped and adds it to its "
        "next upload (EF-SGD); the residual lives in its state (client_states/).",
    )
    secure_range: float = Field(
        0.1,
        gt=0,
        description="int8/int4 under secure aggregation: the +-range of an upload's change, one "
        "scale for every client so masked integers add up; larger changes are clipped.",
    )

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, size: int) -> int:
        if not 8 <= size <= 65536 or size & (size - 1):
            raise ValueError(
                f"block_size {size} is not a power of two from 8 to 65536 (a tensor is cut "
                "into blocks of this many values, the last one shorter)"
            )
        return size

    @model_validator(mode="after")
    def _keys_of_the_scheme(self) -> CodecConfig:
        """A key the scheme does not read is a mistake, not a no-op."""
        quantized = self.scheme in ("int8", "int4") or (
            self.scheme == "topk" and self.values in ("int8", "int4")
        )
        readers = {
            "fraction": self.scheme == "topk",
            "values": self.scheme == "topk",
            "block_size": quantized or self.scheme == "sign",
            "rounding": quantized,
            "error_feedback": self.scheme != "none",
            "secure_range": self.scheme in ("int8", "int4"),
        }
        for key, reads in readers.items():  # a default is no mistake (a dump lists them all)
            if not reads and getattr(self, key) != type(self).model_fields[key].default:
                raise ValueError(f"{key}: scheme {self.scheme} does not read it")
        return self


class CompressionConfig(Section):
    """Compressed messages, each direction on its own (federation/compression/)."""

    upload: CodecConfig = Field(
        default_factory=CodecConfig, description="What clients send: their update's change."
    )
    broadcast: CodecConfig = Field(
        default_factory=CodecConfig, description="What the server sends: the global adapter."
    )

    def summary(self) -> str:
        """'uploads int8, broadcast fp16' (only the directions that are compressed); '' if none."""
        said = []
        for name, codec in (("uploads", self.upload), ("broadcast", self.broadcast)):
            if codec.scheme == "topk":
                said.append(f"{name} top-{codec.fraction:g} ({codec.values})")
            elif codec.scheme != "none":
                said.append(f"{name} {codec.scheme}")
            if codec.error_feedback:
                said[-1] += " with error feedback"
        return ", ".join(said)

    @model_validator(mode="after")
    def _broadcast_is_the_model(self) -> CompressionConfig:
        down = self.broadcast
        if down.scheme == "topk":
            raise ValueError(
                "broadcast.scheme: topk sends a change from what the receiver holds, but the "
                "broadcast is the model itself (a client may have missed any number of rounds); "
                "use fp16, bf16, int8 or int4"
            )
        if down.scheme == "sign":
            raise ValueError(
                "broadcast.scheme: sign brings every small value back at its block's mean size, "
                "which only error feedback (uploads only) makes up for; use fp16, bf16, int8 or "
                "int4"
            )
        if down.error_feedback:
            raise ValueError(
                "broadcast.error_feedback: the server compresses the model itself each round, "
                "so nothing is left over to feed back; only uploads take it"
            )
        return self


class FederationConfig(Section):
    num_clients: int = Field(8, ge=1, description="Number of clients the data is split over.")
    clients_per_round: int = Field(8, ge=1, description="Clients sampled each round.")
    client_sampling: Literal["random", "cyclic"] = Field(
        "random",
        description="How a round's clients are drawn: random (uniformly) or cyclic (each client "
        "once per ceil(num_clients / per round) rounds, in a seeded shuffle per cycle).",
    )
    sample_fraction: float | None = Field(
        None, gt=0, le=1, description="If set: sample this fraction of clients (at least one)."
    )
    rounds: int = Field(10, ge=1, description="Federated rounds.")
    local_steps: int = Field(20, ge=1, description="Optimizer steps per client per round.")
    local_epochs: float | None = Field(
        None, gt=0, description="If set: passes over local data per round instead of local_steps."
    )
    batch_size: int = Field(32, ge=1, description="Local batch size.")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="Client optimizer.")
    lr: float = Field(3e-3, gt=0, description="Client learning rate.")
    lr_decay: Literal["none", "cosine"] = Field(
        "none",
        description="Client lr over the run: constant, or cosine to 0 over the rounds "
        "(baselines: over their steps).",
    )
    adaptive_regularization: AdaptiveRegularizationConfig = Field(
        default_factory=AdaptiveRegularizationConfig,
        description="FedMLLM's modality-agnostic regularization of the middle layers.",
    )
    dp_sgd: DPSGDConfig = Field(
        default_factory=DPSGDConfig,
        description="Sample-level differential privacy inside each client (federated clients).",
    )
    weight_decay: float = Field(0.0, ge=0, description="Client weight decay.")
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Clip each local gradient to this norm; null = no clipping."
    )
    dropout: float = Field(
        0.0, ge=0, lt=1, description="Share of sampled clients that fail each round (simulated)."
    )
    min_clients: int = Field(
        1, ge=1, description="Fewest valid updates a round may aggregate; fewer stops the run."
    )
    stragglers: float = Field(
        0.0, ge=0, le=1, description="Share of clients on slow devices (drawn by seed)."
    )
    straggler_slowdown: float = Field(
        4.0, ge=1, description="How many times slower a straggler's local step is."
    )
    round_deadline: float | None = Field(
        None,
        gt=0,
        description="Time budget per round in nominal local steps; later uploads "
        "are left out. null = wait for all.",
    )
    max_update_norm: float | None = Field(
        None, gt=0, description="Reject updates further than this (L2) from the global adapter."
    )
    secure_aggregation: SecureAggregationConfig = Field(
        default_factory=lambda: SecureAggregationConfig(),
        description="Masked uploads whose sum alone the server learns (true/false or a section).",
    )
    client_weights: Literal["partition", "capped", "equal"] = Field(
        "partition",
        description="What an update weighs: its client's partition size (a claim must equal it), "
        "the client's claim up to max_claimed_samples, or the same for every client.",
    )
    max_claimed_samples: int | None = Field(
        None, gt=0, description="client_weights capped: the most samples a client may claim."
    )
    seeded_privacy_noise: bool = Field(
        False,
        description="Simulations only: DP noise from the run seed (reproducible, but whoever holds "
        "the config can subtract it); false = from the operating system.",
    )
    strategy: StrategyConfig = Field(default_factory=StrategyConfig, description="Aggregation.")
    compression: CompressionConfig = Field(
        default_factory=CompressionConfig,
        description="Compressed uploads and broadcasts (fp16, int8/int4 blockwise, top-k).",
    )

    @property
    def sampled_per_round(self) -> int:
        if self.sample_fraction is not None:
            return max(1, round(self.sample_fraction * self.num_clients))
        return self.clients_per_round

    def lr_at(self, progress: float, peak: float | None = None) -> float:
        """The learning rate at `progress` in [0, 1) of the run, from `peak` (default: lr)."""
        peak = self.lr if peak is None else peak
        if self.lr_decay == "none":
            return peak
        return 0.5 * peak * (1 + math.cos(math.pi * progress))

    def steps_for(self, num_samples: int) -> int:
        """Local steps per round for a client holding `num_samples` (differs under epochs)."""
        if self.local_epochs is None:
            return self.local_steps
        return max(1, math.ceil(self.local_epochs * num_samples / self.batch_size))

    @model_validator(mode="after")
    def _capped_weights_need_a_cap(self) -> FederationConfig:
        if self.client_weights == "capped" and self.max_claimed_samples is None:
            raise ValueError("client_weights capped needs max_claimed_samples (the cap)")
        return self

    @model_validator(mode="after")
    def _secure_aggregation_compatible(self) -> FederationConfig:
        secure = self.secure_aggregation
        if not secure.enabled:
            return self
        sampled = self.sampled_per_round
        if sampled < 2:
            raise ValueError(
                "secure_aggregation needs at least 2 clients per round (one client's sum is its "
                f"update); {sampled} is sampled (clients_per_round / sample_fraction)"
            )
        if secure.threshold is not None and secure.threshold > sampled:
            raise ValueError(
                f"secure_aggregation.threshold ({secure.threshold}) exceeds the {sampled} "
                "clients sampled per round (clients_per_round / sample_fraction)"
            )
        if self.max_update_norm is not None:
            raise ValueError("max_update_norm cannot be checked on masked updates; unset it")
        refusal = MASKED_REFUSALS.get(self.compression.upload.scheme)
        if refusal:
            raise ValueError(
                f"compression.upload.scheme {self.compression.upload.scheme}: {refusal}"
            )
        t = secure.survivors_needed(sampled)
        if 2 * t <= sampled:
            if not secure.allow_minority:
                raise ValueError(
                    f"secure_aggregation.threshold ({t}) is half or less of the {sampled} "
                    "clients sampled per round: a server that splits them into groups could "
                    "unmask one; raise it, or set secure_aggregation.allow_minority: true"
                )
            log.warning(
                "secure_aggregation.threshold %d of %d clients (allow_minority): a "
                "server that splits the clients could unmask one's update",
                t,
                sampled,
            )
        if secure.identities is not None and not Path(secure.identities).is_dir():
            raise ValueError(f"secure_aggregation.identities: {secure.identities} is not a folder")
        return self

    @model_validator(mode="after")
    def _sampled_within_population(self) -> FederationConfig:
        if self.sample_fraction is None and self.clients_per_round > self.num_clients:
            raise ValueError(
                f"clients_per_round ({self.clients_per_round}) exceeds num_clients "
                f"({self.num_clients})"
            )
        return self


class AttackConfig(Section):
    kind: Literal["none", "sign_flip", "scale", "random"] = Field(
        "none", description="What malicious clients send instead of their honest update."
    )
    fraction: float = Field(0.2, ge=0, le=1, description="Share of clients that are malicious.")
    magnitude: float = Field(
        4.0, gt=0, description="sign_flip: -m*Delta; scale: m*Delta; random: noise of m*|Delta|."
    )


class BaselinesConfig(Section):
    zero_shot: bool = Field(True, description="Evaluate the foundation model as is.")
    local: bool = Field(True, description="Each client trains alone for the federated budget.")
    centralized: bool = Field(True, description="LoRA on the pooled data for the same budget.")
    lr: float | None = Field(
        None,
        gt=0,
        description="The baselines' lr (decayed like federation.lr); null = federation.lr. "
        "Compare each method at its own best lr.",
    )


class EvalConfig(Section):
    batch_size: int = Field(300, ge=1, description="Questions decoded per batch.")
    vqa_metric: Literal["current", "original"] = Field(
        "current",
        description="The official VQA script's rule: as revised in 2021, or the original one "
        "(earlier papers').",
    )
    every: int = Field(1, ge=1, description="Evaluate the global model every N rounds.")
    images_per_prompt: int = Field(4, ge=1, description="Images drawn per GenEval prompt.")
    detector: str = Field(
        "shapesworld",
        description="GenEval detector: the ShapesWorld parser, 'photo' (detector_model + "
        "color_model), or 'package.module:Name' (a factory of a callable image -> detections).",
    )
    detector_model: str | None = Field(
        None, description="detector photo: a transformers object detector's folder (e.g. DETR)."
    )
    color_model: str | None = Field(
        None, description="detector photo: a CLIP folder, for each object's colour."
    )
    modality_ablation: bool = Field(
        False, description="Classification: also score with the image only and the text only."
    )
    temperature: float = Field(1.0, ge=0, description="Image sampling temperature; 0 = greedy.")
    top_k: int | None = Field(None, ge=1, description="Sample image codes from the top k only.")
    guidance_scale: float = Field(
        1.0, ge=0, description="Classifier-free guidance scale; 1.0 = none."
    )


DEVICE_NAMES = "auto, cpu, cuda or cuda:N"
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _check_device(name: str, allow_auto: bool = True) -> str:
    if not _DEVICE.match(name) or (name == "auto" and not allow_auto):
        names = DEVICE_NAMES if allow_auto else DEVICE_NAMES.removeprefix("auto, ")
        raise ValueError(f"unknown device {name!r}; expected {names}")
    return name


class RuntimeConfig(Section):
    """Where and in what precision models run. None of it changes what a run computes except
    `precision` (and micro-batching, at the level of float rounding)."""

    device: str = Field(
        "auto", description="auto (the first GPU if there is one, else the CPU), cpu, cuda, cuda:N."
    )
    devices: list[str] | Literal["all"] | None = Field(
        None,
        description="Devices that train a round's clients in parallel, one worker each holding "
        "a base model ([cuda:0, cuda:1], or all GPUs); null = only `device`.",
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="fp32, or autocast to bf16 / fp16 (fp16 with loss scaling, CUDA only); "
        "LoRA weights and optimizer state stay fp32.",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: less memory, more compute."
    )
    micro_batch_size: int | None = Field(
        None,
        ge=1,
        description="Split each batch into micro-batches of this many samples and accumulate "
        "their gradients; null = the whole batch at once.",
    )
    client_devices: int | list[str] | None = Field(
        None,
        description="Processes that train one client together (torch.distributed), each on an "
        "equal share of every batch: a count (on `device`; on CUDA one GPU each) or their "
        "devices ([cuda:0, cuda:1]; name a GPU twice to split it); rank 0 talks to the server. "
        "null = one process.",
    )
    client_sharding: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="With client_devices: ddp, every process holds the whole frozen base; fsdp, "
        "the base is sharded over them (torch's fully_shard), for a base one device cannot hold.",
    )
    client_timeout: int = Field(
        600,
        ge=1,
        description="Seconds a client's process waits on the others (a step's gradients) "
        "before it gives the client up as failed.",
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        return _check_device(device)

    @field_validator("devices", "client_devices")
    @classmethod
    def _known_devices(cls, devices: int | list[str] | str | None) -> int | list[str] | str | None:
        if isinstance(devices, int) and devices < 1:  # client_devices' count
            raise ValueError(f"a client runs on at least 1 process, not {devices}")
        if isinstance(devices, list):
            if not devices:
                raise ValueError("name at least one device, or null")
            for name in devices:
                _check_device(name, allow_auto=False)
        return devices

    @property
    def client_processes(self) -> int:
        """How many processes train one client."""
        devices = self.client_devices
        return len(devices) if isinstance(devices, list) else (devices or 1)


class TrackingConfig(Section):
    """Where a run's numbers go besides results.json. `tracking: mlflow` is short for
    `tracking: {backend: mlflow}`."""

    backend: Literal["none", "tensorboard", "mlflow"] = Field(
        "none", description="none, tensorboard (event files in OUTDIR/tensorboard) or mlflow."
    )
    mlflow_uri: str | None = Field(
        None, description="MLflow tracking URI; null = a SQLite store in ./mlruns."
    )
    experiment: str = Field("fedumm", description="MLflow experiment the runs are logged under.")

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data):
        return {"backend": data} if isinstance(data, str) else data


class FlareConfig(Section):
    env: Literal["sim", "poc"] = Field(
        "sim", description="FLARE's simulator, or POC mode (real server and client processes)."
    )
    round_timeout: int = Field(
        600, ge=1, description="Seconds the server waits for a round's answers before going on."
    )
    state_dir: str | None = Field(
        None,
        description="Where each site keeps its own state after every round (site-k/ under it), "
        "to resume; null = OUT/flare/state (simulator, POC), fedumm_state (an exported job).",
    )
    site_devices: list[str] | dict[str, str] | None = Field(
        None,
        description="Each site's device: a list dealt to site-1, site-2, ... in turn ([cuda:0, "
        "cuda:1]; [cuda:0]: all share one), or {site-k: device}; null = runtime.device.",
    )

    @field_validator("site_devices")
    @classmethod
    def _known_devices(cls, devices: list[str] | dict[str, str] | None):
        if devices is not None:
            if not devices:
                raise ValueError("name at least one device, or null")
            names = devices.values() if isinstance(devices, dict) else devices
            for name in names:
                _check_device(name)
        return devices

    def site_device(self, site: str, index: int, default: str) -> str:
        """The device site `site` (the `index`-th, from 0) trains on."""
        if isinstance(self.site_devices, list):
            return self.site_devices[index % len(self.site_devices)]
        return (self.site_devices or {}).get(site, default)


class FlowerConfig(Section):
    env: Literal["sim", "deployment"] = Field(
        "sim",
        description="Flower's simulation runtime, or a local deployment: a SuperLink and one "
        "SuperNode per site as separate processes, the app started with `flwr run`.",
    )
    round_timeout: int = Field(
        600, ge=1, description="Seconds the server waits for a round's answers before going on."
    )
    client_cpus: float = Field(
        1.0,
        gt=0,
        description="CPUs each simulated client reserves (Ray): cores / this train at once.",
    )
    connect_timeout: int = Field(
        120, ge=1, description="Seconds the server waits for every SuperNode to connect."
    )
    insecure: bool = Field(
        False,
        description="Deployment without TLS or SuperNode authentication (any process reaching "
        "the SuperLink joins); for debugging only.",
    )
    certificates: str | None = Field(
        None,
        description="Folder of your own ca.crt, superlink.crt/.key and site-K.key/.pub for "
        "deployments; null = fedumm generates them.",
    )

    @model_validator(mode="after")
    def _tls_or_not(self) -> FlowerConfig:
        if self.insecure and self.certificates is not None:
            raise ValueError("certificates with insecure: an insecure deployment uses none")
        return self


class RunConfig(Section):
    seed: int = Field(0, description="Seeds data, partition, LoRA init and training.")
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads; null = torch's default (all cores)."
    )
    runtime: RuntimeConfig = Field(
        default_factory=RuntimeConfig, description="Device, precision and memory savers."
    )
    data: DataConfig = Field(default_factory=DataConfig, description="Data set.")
    partition: PartitionConfig = Field(
        default_factory=PartitionConfig, description="Non-IID split."
    )
    model: ModelConfig = Field(default_factory=ModelConfig, description="Foundation model.")
    lora: LoraSection | None = Field(
        default_factory=LoraSection, description="Adapters; null = federated full fine-tuning."
    )
    federation: FederationConfig = Field(default_factory=FederationConfig, description="Rounds.")
    baselines: BaselinesConfig = Field(default_factory=BaselinesConfig, description="Baselines.")
    attack: AttackConfig = Field(
        default_factory=AttackConfig, description="Simulated malicious clients."
    )
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation.")
    checkpoint_every: int = Field(
        1, ge=0, description="Write a resumable checkpoint every N rounds; 0 = never."
    )
    engine: Literal["embedded", "flare", "flower"] = Field(
        "embedded",
        description="Run every client in this process, on NVIDIA FLARE, or on Flower.",
    )
    flare: FlareConfig = Field(default_factory=FlareConfig, description="The FLARE engine.")
    flower: FlowerConfig = Field(default_factory=FlowerConfig, description="The Flower engine.")
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig, description="Experiment tracking (TensorBoard, MLflow)."
    )

    def holds(self, client_index: int, task: str) -> bool:
        """Whether client `client_index` (0 = site-1) holds data of `task`."""
        if task not in self.data.tasks:
            return False
        chosen = self.partition.client_tasks
        return chosen is None or chosen[client_index % len(chosen)] in (task, "both")

    def task_clients(self, task: str) -> int:
        return sum(self.holds(i, task) for i in range(self.federation.num_clients))

    @property
    def deployment(self) -> str | None:
        """The deployment this config runs as (real processes: 'flare.env poc', 'flower.env
        deployment'), or None for a simulation or the embedded engine."""
        env = {"flare": self.flare.env, "flower": self.flower.env}.get(self.engine)
        return f"{self.engine}.env {env}" if env in ("poc", "deployment") else None

    def check_deployment(self, where: str, exported: bool = False) -> None:
        """Refuse what no deployment may run: the one check of every deployment path, before
        any work. A deployed run (flare.env poc, flower.env deployment) is checked by the
        validator below, so wherever such a config is built (the CLI, a sweep, the engines'
        own processes); an export (`fedumm flare|flower export`) by the CLI. `where` names
        the deployment ('flower.env deployment', 'an exported app'); an export runs on machines
        fedumm cannot hand identities to (`exported`)."""
        if self.federation.seeded_privacy_noise:
            raise ConfigError(
                f"federation.seeded_privacy_noise: {where} is a deployment, where noise anyone "
                "can regenerate protects nothing; unset it"
            )
        secure = self.federation.secure_aggregation
        if exported and secure.enabled and secure.signed_keys and not secure.identities:
            raise ConfigError(
                f"federation.secure_aggregation.signed_keys: {where} runs on the sites' own "
                "machines, each needing its own identity: set secure_aggregation.identities to "
                "a folder at the same path on every machine (rootCA.pem and that site's "
                ".crt/.key from `fedumm identities`, or a FLARE project's provisioned kits)"
            )

    # ---- rules across sections: each names what breaks it, or returns None -------------------
    @model_validator(mode="after")
    def _sections_agree(self) -> RunConfig:
        """The rules below, in this order (task by task for the per-task ones): the first broken
        one is refused."""
        per_task = (self._no_holder, self._too_few_samples, self._no_min_samples, self._no_shards)
        rules = [
            *(partial(rule, *pool) for pool in self._task_pools() for rule in per_task),
            self._modality_without_classification,
            self._too_many_image_only_clients,
            self._client_tasks_outside_data_tasks,
            self._deployment_refusal,
            self._unknown_site_devices,
            self._micro_batches_under_dp_sgd,
            self._ranks_not_per_client,
            self._client_processes_refusal,
        ]
        for rule in rules:
            problem = rule()
            if problem:
                raise ValueError(problem)
        return self

    def _task_pools(self) -> list[tuple[str, str, int, int]]:
        """(task, the key of its training samples, their number, the clients holding the task)
        for each task in data.tasks."""
        pools = {
            "vqa": ("data.train_samples", self.data.train_samples),
            "generation": ("data.generation.train_samples", self.data.generation.train_samples),
            "classification": (
                "data.classification.train_samples",
                self.data.classification.train_samples,
            ),
        }
        return [(task, *pools[task], self.task_clients(task)) for task in self.data.tasks]

    def _no_holder(self, task: str, key: str, samples: int, holders: int) -> str | None:
        if holders == 0:
            return f"partition.client_tasks gives no client the {task} task in data.tasks"
        return None

    def _too_few_samples(self, task: str, key: str, samples: int, holders: int) -> str | None:
        everyone = holders == self.federation.num_clients
        population = (
            "federation.num_clients" if everyone else "the clients partition.client_tasks gives it"
        )
        if holders > samples:
            return (
                f"{population} ({holders}) is more than {key} ({samples}): "
                f"every client needs at least one {task} sample"
            )
        return None

    def _no_min_samples(self, task: str, key: str, samples: int, holders: int) -> str | None:
        least = self.partition.min_samples
        if holders * least > samples:
            return (
                f"{key} ({samples}) cannot give {holders} clients "
                f"partition.min_samples ({least}) each"
            )
        return None

    def _no_shards(self, task: str, key: str, samples: int, holders: int) -> str | None:
        per_client = self.partition.shards_per_client
        if self.partition.scheme == "shards" and holders * per_client > samples:
            return (
                f"{key} ({samples}) cannot make {holders} clients x "
                f"partition.shards_per_client ({per_client}) shards"
            )
        return None

    def _modality_without_classification(self) -> str | None:
        scenario = self.partition.modality.scenario
        if scenario != "aligned" and "classification" not in self.data.tasks:
            return (
                f"partition.modality.scenario {scenario!r} applies to the classification "
                f"task, which data.tasks ({self.data.tasks}) does not include"
            )
        return None

    def _too_many_image_only_clients(self) -> str | None:
        modality, holders = self.partition.modality, self.task_clients("classification")
        if modality.scenario == "cross" and modality.image_only_clients > holders:
            return (
                f"partition.modality.image_only_clients ({modality.image_only_clients}) "
                f"exceeds the {holders} clients holding the classification task"
            )
        return None

    def _client_tasks_outside_data_tasks(self) -> str | None:
        chosen = self.partition.client_tasks or []
        named = {t for c in chosen for t in (("vqa", "generation") if c == "both" else (c,))}
        outside = ", ".join(sorted(named - set(self.data.tasks)))
        if outside:
            return f"partition.client_tasks names {outside} but data.tasks is {self.data.tasks}"
        return None

    def _deployment_refusal(self) -> None:
        if self.deployment is not None:
            self.check_deployment(self.deployment)  # raises what it refuses

    def _unknown_site_devices(self) -> str | None:
        named = self.flare.site_devices
        sites = {f"site-{i}" for i in range(1, self.federation.num_clients + 1)}
        unknown = sorted(set(named) - sites) if isinstance(named, dict) else []
        if unknown:
            return (
                f"flare.site_devices names {', '.join(unknown)}, which is not a site: the "
                f"sites are site-1..site-{self.federation.num_clients}"
            )
        return None

    def _micro_batches_under_dp_sgd(self) -> str | None:
        micro = self.runtime.micro_batch_size
        if self.federation.dp_sgd.enabled and micro and micro < self.federation.batch_size:
            return (
                f"runtime.micro_batch_size ({micro}) with federation.dp_sgd: DP-SGD clips each "
                "sample's gradient over the whole batch at once; unset micro_batch_size"
            )
        return None

    def _client_processes_refusal(self) -> str | None:
        rt, many = self.runtime, self.runtime.client_processes > 1
        if many and self.federation.dp_sgd.enabled:
            return (
                "runtime.client_devices with federation.dp_sgd: DP-SGD clips and noises each "
                "sample's gradient in one process; train each client on one"
            )
        if many and rt.devices is not None:
            return (
                "runtime.client_devices with runtime.devices: one trains each client on several "
                "processes, the other several clients at once, one per device; choose one"
            )
        if rt.client_sharding != "fsdp":
            return None
        if not many:
            return (
                "runtime.client_sharding: fsdp shards the base over runtime.client_devices' "
                "processes; there is one"
            )
        if self.engine == "embedded":
            return (
                "runtime.client_sharding: fsdp under the embedded engine, whose server "
                "evaluates the global model in the same process on the whole base, so "
                "sharding saves nothing there; use ddp, or run the sites under flare or flower"
            )
        if self.lora is None:
            return (
                "runtime.client_sharding: fsdp shards the frozen base, and a fully fine-tuned "
                "model (lora: null) has none; use ddp"
            )
        if self.model.quantization != "none":
            return (
                "runtime.client_sharding: fsdp cannot shard a quantized base "
                f"(model.quantization: {self.model.quantization}); use ddp"
            )
        return None

    def _ranks_not_per_client(self) -> str | None:
        ranks = self.lora.client_ranks if self.lora else None
        if ranks is not None and len(ranks) != self.federation.num_clients:
            return (
                f"lora.client_ranks has {len(ranks)} entries for "
                f"{self.federation.num_clients} clients (federation.num_clients)"
            )
        return None


class PretrainConfig(Section):
    architecture: Literal["umm", "janus"] = Field(
        "umm",
        description="The built-in unified model, or a small Janus (vision tower to read, VQ-VAE "
        "and generation head to draw) saved as a Hugging Face folder.",
    )
    seed: int = Field(0, description="Seeds tokenizers, codebook, data and initialisation.")
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads; null = torch's default (all cores)."
    )
    runtime: RuntimeConfig = Field(
        default_factory=RuntimeConfig, description="Device, precision and memory savers."
    )
    text_vocab_size: int = Field(400, ge=300, description="Byte-level BPE vocabulary size.")
    codebook_size: int = Field(256, ge=2, description="VQ image codebook size (upper bound).")
    hidden_size: int = Field(128, ge=8, description="Transformer width.")
    intermediate_size: int = Field(384, ge=8, description="MLP width.")
    num_layers: int = Field(4, ge=1, description="Transformer blocks.")
    num_heads: int = Field(4, ge=1, description="Attention heads.")
    codebook_images: int = Field(3000, ge=10, description="Images the codebook is fit on.")
    train_samples: int = Field(20000, ge=1, description="Caption scenes for pretraining.")
    test_samples: int = Field(300, ge=1, description="Held-out caption scenes for evaluation.")
    short_captions: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of caption-to-image prompts that are short object lists ('two red "
        "circles and a square.') instead of dense captions.",
    )
    matching_samples: int = Field(
        0, ge=0, description="Image-caption matching pairs (yes/no, as BLIP's ITM); 0 = none."
    )
    question_samples: int = Field(
        0,
        ge=0,
        description="Question-answer pairs of `question_families` (an assistant's "
        "instruction data); 0 = none.",
    )
    question_families: list[str] = Field(
        ["existence", "color"],
        description="ShapesWorld question families pretraining asks; the others are held out "
        "for the downstream clients.",
    )
    vq_steps: int = Field(
        1500, ge=1, description="janus: steps fitting its VQ-VAE to the patch codebook."
    )
    steps: int = Field(2500, ge=1, description="Optimizer steps.")
    batch_size: int = Field(64, ge=1, description="Batch size.")
    lr: float = Field(3e-3, gt=0, description="Peak AdamW learning rate.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")

    @field_validator("question_families")
    @classmethod
    def _known_families(cls, families: list[str]) -> list[str]:
        check_families(families)
        return families

    @model_validator(mode="after")
    def _heads_divide_width(self) -> PretrainConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by "
                f"num_heads ({self.num_heads})"
            )
        return self


# Keys that earlier versions wrote into results.json and checkpoints and that have since been
# removed (they never changed a run): dropped when an old run's config is read back.
RETIRED_KEYS = ("federation.engine",)


def without_retired(raw: dict) -> dict:
    """A copy of a stored config without RETIRED_KEYS."""
    raw = copy.deepcopy(raw)
    for key in RETIRED_KEYS:
        *path, last = key.split(".")
        node = raw
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return raw


def annotated_defaults(
    schema: type[BaseModel], indent: int = 0, notes: dict[type[BaseModel], list[str]] | None = None
) -> str:
    """The schema's defaults as YAML, each key followed by its one-line description; `notes`
    adds comment lines at the end of a section (what the schema cannot list itself, such as
    each algorithm's parameters)."""
    lines = []
    pad = "  " * indent
    for name, field in schema.model_fields.items():
        kinds = get_args(field.annotation) or (field.annotation,)  # Section | None -> Section
        kind = next((k for k in kinds if isinstance(k, type) and issubclass(k, Section)), None)
        if kind is not None:
            lines.append(f"{pad}{name}:  # {field.description}")
            lines.append(annotated_defaults(kind, indent + 1, notes))
            continue
        default = field.get_default(call_default_factory=True)
        value = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("\n...")
        lines.append(f"{pad}{name}: {value}  # {field.description}")
    lines += [f"{pad}# {line}" for line in (notes or {}).get(schema, [])]
    return "\n".join(lines)


def _describe(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'federation.rounds=4' -> (['federation', 'rounds'], 4), the value parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set expects dotted.key=value, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(value)


def apply_overrides(raw: dict, overrides: list[str] | dict[str, Any]) -> dict:
    """Set dotted keys in `raw`: from `--set` strings, or from a {dotted key: value} mapping."""
    pairs = (
        [(k.split("."), v) for k, v in overrides.items()]
        if isinstance(overrides, dict)
        else [parse_override(text) for text in overrides]
    )
    for path, value in pairs:
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{'.'.join(path)}: {part!r} is not a section")
        node[path[-1]] = value
    return raw


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping from `path`, or a ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw


def validate(raw: dict, schema: type[Section], source: str):
    try:
        return schema.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_describe(e, source)) from None


def load_config(
    path: str | Path | None, overrides: list[str] | None = None, schema: type[Section] = RunConfig
):
    """Read a YAML file (or defaults when `path` is None), apply `--set` overrides, validate."""
    raw = read_yaml(path) if path is not None else {}
    raw = apply_overrides(raw, overrides or [])
    return validate(raw, schema, str(path) if path is not None else "(defaults)")
