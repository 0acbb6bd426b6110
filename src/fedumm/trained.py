"""What a run leaves behind, put to use: its adapter saved in peft's format, loaded again,
exported, asked a question, drawn with, scored on other data.

A finished run folder holds `results.json` (its config among the results) and either
`adapter/` (LoRA: adapter_config.json + adapter_model.safetensors, which
`PeftModel.from_pretrained(base, RUN/adapter)` loads; personalized strategies add
`adapter/clients/<client>/`, each client's own model) or `model/` (federated full fine-tuning:
the whole model, with its tokenizer and image processor).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedumm.config import ModelConfig, RunConfig
from fedumm.federation.update import Params
from fedumm.models import adapted, base_name, load_processor
from fedumm.models import load as load_model
from fedumm.models.lora import initial_adapters, read_pretrained, save_pretrained, set_adapter
from fedumm.models.processor import Processor, encode_vqa
from fedumm.results import EvalResult, RunResult
from fedumm.runtime import CPU, Runtime

ADAPTER, FULL_MODEL, CLIENTS = "adapter", "model", "clients"


def save_model(model: torch.nn.Module, processor: Processor, folder: Path) -> Path:
    """A model with its tokenizer (and image processor) as a folder that loads without
    fedumm: `from_pretrained` on it, or `model.name_or_path` / `model.foundation` in a config."""
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.tokenizer.save_pretrained(folder)
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is not None:
        image_processor.save_pretrained(folder)
    return folder


def save_run_model(
    model: torch.nn.Module,
    processor: Processor,
    cfg: RunConfig,
    params: Params,
    out_dir: Path,
    personal: Iterable[tuple[str, Params]] = (),
) -> Path:
    """The trained model of a run into `out_dir`: the global adapter (and each client's own,
    from the (client, adapter) pairs `personal`, written one at a time), or the fine-tuned
    model itself without LoRA."""
    if cfg.lora is None:
        set_adapter(model, params)
        return save_model(model, processor, Path(out_dir) / FULL_MODEL)
    base = base_name(cfg.model)
    folder = save_pretrained(model, params, Path(out_dir) / ADAPTER, base)
    for client, own in personal:
        save_pretrained(model, own, folder / CLIENTS / client, base)
    return folder


@dataclass
class TrainedRun:
    """A finished run folder: its config and where its trained model lies."""

    folder: Path
    config: RunConfig
    client: str | None = None  # a personalized strategy's client, or the global model

    @property
    def adapter(self) -> Path | None:
        """The adapter folder used (None: the run fine-tuned the whole model)."""
        if self.config.lora is None:
            return None
        top = self.folder / ADAPTER
        return top / CLIENTS / self.client if self.client else top

    @property
    def full_model(self) -> ModelConfig:
        """The model section that loads a full fine-tuning run's model."""
        path = str(self.folder / FULL_MODEL)
        spec = self.config.model
        if spec.name_or_path is not None:
            return spec.model_copy(update={"name_or_path": path})
        return spec.model_copy(update={"foundation": path})


def open_run(folder: Path, client: str | None = None) -> TrainedRun:
    """The run in `folder`, checked before any model loads: its results, config and trained
    model are there (and `client`'s own adapter, if one is named)."""
    folder = Path(folder)
    results = folder / "results.json"
    if not results.is_file():
        raise FileNotFoundError(f"{folder}: no results.json; not a finished fedumm run")
    stored = RunResult.load(results)  # a ResultsError (a ValueError) names the key
    try:
        config = stored.run_config()
    except ValueError as e:
        raise ValueError(f"{results}: its config cannot be read: {e}") from e
    run = TrainedRun(folder, config, client)
    where = run.adapter
    if where is None:
        if not (folder / FULL_MODEL / "config.json").is_file():
            raise FileNotFoundError(f"{folder}: no {FULL_MODEL}/ with the fine-tuned model")
        if client:
            raise ValueError(f"{folder}: a full fine-tuning run has no per-client models")
        return run
    if client and not where.is_dir():
        held = sorted(p.name for p in (folder / ADAPTER / CLIENTS).glob("*"))
        raise FileNotFoundError(
            f"{folder}: no adapter of client {client!r}; "
            + (
                f"clients: {', '.join(held)} (one that never trained holds the global model)"
                if held
                else "the run's strategy keeps none"
            )
        )
    if not (where / "adapter_config.json").is_file():
        old = (folder / "global_adapter.safetensors").is_file()
        raise FileNotFoundError(
            f"{where}: no adapter_config.json"
            + ("; the run predates adapter/ folders: run it again" if old else "")
        )
    return run


def check_matches(run: TrainedRun, cfg: RunConfig) -> None:
    """Refuse `cfg` if its model is not the base the run's adapter was trained on, or its
    LoRA rank is not the adapter's: read from the adapter's config, before any model loads."""
    if run.adapter is None:
        return
    config, _ = read_pretrained(run.adapter)
    trained_on, wanted = config.get("base_model_name_or_path"), base_name(cfg.model)
    same = trained_on == wanted or (
        trained_on is not None and Path(trained_on).resolve() == Path(wanted).resolve()
    )
    if not same:
        raise ValueError(
            f"{run.adapter}: the adapter was trained on {trained_on}, the config's "
            f"model is {wanted}"
        )
    if cfg.lora is not None and cfg.lora.r != config["r"] and not cfg.lora.client_ranks:
        raise ValueError(
            f"{run.adapter}: the adapter has rank {config['r']}, the config's "
            f"lora.r is {cfg.lora.r}"
        )


@dataclass
class Loaded:
    """A run's trained model, ready to use, and what the base alone needs."""

    model: torch.nn.Module
    processor: Processor
    fresh: Params | None  # the adapter as initialised (B = 0: the base's own behaviour)


def load(run: TrainedRun, spec: ModelConfig | None = None, runtime: Runtime = CPU) -> Loaded:
    """The run's trained model on `spec`'s base (the run's own by default), unquantized: an
    adapter trained on a quantized base is served on the full-precision one, which it fits as
    well (tests/models/test_quantization.py) and which `export --merge` can merge into."""
    if run.adapter is None:
        loaded = load_model(run.full_model, runtime)
        return Loaded(loaded.model, loaded.processor, None)
    base = (spec or run.config.model).model_copy(update={"quantization": "none"})
    loaded = load_model(base, runtime)
    model = adapted(loaded, run.config.lora, run.config.seed)
    fresh = initial_adapters(model)[run.config.lora.r]
    set_adapter(model, read_pretrained(run.adapter)[1])
    model.eval()
    return Loaded(model, loaded.processor, fresh)


def export(run: TrainedRun, out: Path, merge: bool = False) -> Path:
    """The trained model into `out`: the adapter folder as peft saves it (folded deltas
    beside, if any), or with `merge` the base with the adapter and any folded deltas merged
    into its weights, a plain model folder with its tokenizer and image processor that
    `from_pretrained` loads without fedumm or peft."""
    out = Path(out)
    if run.adapter is None or not merge:
        source = run.adapter or run.folder / FULL_MODEL
        shutil.copytree(source, out, ignore=shutil.ignore_patterns(CLIENTS), dirs_exist_ok=True)
        return out
    trained = load(run)
    return save_model(trained.model.merge_and_unload(), trained.processor, out)


def ask(run: TrainedRun, image: Path, question: str, runtime: Runtime = CPU) -> str:
    """The trained model's answer to `question` about the image file `image`, prompted as in
    training."""
    from fedumm.data.images import load_image
    from fedumm.evaluation.vqa import answer_questions

    if not question.strip():
        raise ValueError("the question is empty")
    processor = load_processor(run.config.model)
    picture = load_image(Path(image), processor.image_size)
    if picture is None:
        raise ValueError(f"{image}: not an image that can be decoded")
    trained = load(run, runtime=runtime)
    prompt = encode_vqa(trained.processor, picture[None], [question], [""])[0].prompt_only()
    with runtime.autocast():
        return answer_questions(trained.model, trained.processor, [prompt], 1)[0]


def draw(
    run: TrainedRun,
    prompts: list[str],
    seed: int = 0,
    runtime: Runtime = CPU,
    cfg: RunConfig | None = None,
) -> np.ndarray:
    """(N, H, W, 3) uint8: one image per prompt from the trained model, sampled as the run's
    evaluation samples (its eval temperature, top-k and guidance), seeded by `seed`."""
    cfg = cfg or run.config
    if not prompts or not all(p.strip() for p in prompts):
        raise ValueError("a prompt is empty")
    processor = load_processor(cfg.model)
    if not processor.draws:
        raise ValueError(f"the run's model ({processor.family_name}) does not draw images")
    trained = load(run, runtime=runtime)
    e = cfg.eval
    with runtime.autocast():
        return trained.processor.draw(
            trained.model, prompts, seed, e.temperature, e.top_k, e.guidance_scale, e.batch_size
        )


def evaluate(
    run: TrainedRun,
    cfg: RunConfig | None = None,
    baseline: bool = False,
    runtime: Runtime = CPU,
    out: Path | None = None,
) -> dict:
    """The run's trained model scored on every test set `cfg` names (the run's own config by
    default: the same data, the same scores), without training; with `baseline`, the base
    alone beside it. Writes eval.json and eval.md into `out` when given."""
    from fedumm.tasks import build_tasks
    from fedumm.tasks import evaluate as evaluate_tasks

    start = time.perf_counter()
    cfg = cfg or run.config
    check_matches(run, cfg)  # refused before the data is read or the model loads
    torch.manual_seed(cfg.seed)
    trained = load(run, cfg.model, runtime)
    model, processor = trained.model, trained.processor
    tasks = build_tasks(cfg, processor)
    grid = Path(out) / "generated.png" if out and "generation" in tasks else None
    result: dict = {
        "run": str(run.folder),
        "client": run.client,
        "config": cfg.model_dump(),
        "metrics": evaluate_tasks(tasks, model, processor, cfg.eval, grid, runtime),
        "data": {name: task.summary() for name, task in tasks.items()},
    }
    if baseline:
        if trained.fresh is None:  # full fine-tuning: the base is another model
            model = load_model(cfg.model, runtime).model
        else:
            set_adapter(model, trained.fresh)
        result["zero_shot"] = evaluate_tasks(tasks, model, processor, cfg.eval, None, runtime)
    result["wall_seconds"] = time.perf_counter() - start
    if out is not None:
        write_eval(result, Path(out))
    return result


def write_eval(result: dict, out: Path) -> None:
    """eval.json and eval.md (a table per headline metric) into `out`."""
    from fedumm.evaluation.metrics import headlines
    from fedumm.report import metric_table

    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=2))
    scored = EvalResult.of(result)
    who = f"client {scored.client}'s model" if scored.client else "the global model"
    rows = [("zero-shot foundation", scored.zero_shot)] if scored.zero_shot is not None else []
    rows.append((f"trained ({who})", scored.metrics))
    lines = [
        f"# Evaluation of {scored.run}",
        "",
        f"Wall time {scored.wall_seconds:.0f} s; data: "
        + ", ".join(f"{k} ({v.source})" for k, v in scored.data.items())
        + ".",
    ]
    for key in headlines(scored.metrics):
        lines += ["", *metric_table(rows, key)]
    (out / "eval.md").write_text("\n".join(lines) + "\n")
