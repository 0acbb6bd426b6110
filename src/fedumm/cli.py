"""The `fedumm` command: a thin layer over config loading and the run recipe (`fedumm.recipe`)."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fedumm.config import ConfigError, PretrainConfig, RunConfig, load_config

if TYPE_CHECKING:  # imported where used: the CLI starts fast
    from fedumm.results import RunResult

app = typer.Typer(
    help=(
        "Federated LoRA fine-tuning of unified multimodal models.\n\n"
        "Clients each hold private image+text data; they adapt one frozen foundation model by "
        "training small LoRA adapters locally, and the server aggregates only the adapters.\n\n"
        "Start with:  fedumm run configs/quickstart.yaml -o runs/quickstart"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EMPTY_ANSWER = "(an empty answer: the model ended its reply at once)"  # what `ask` prints then

SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help="Override a config key, e.g. --set federation.rounds=4 "
        "(repeatable; values are parsed as YAML).",
    ),
]
QuietOption = Annotated[bool, typer.Option(help="No progress bars.")]
SeedOption = Annotated[int, typer.Option(help="The random seed.")]


@contextmanager
def _exit_on(*errors: type[Exception], code: int = 1) -> Iterator[None]:
    """Expected failures end the command with one red line and exit code `code` (2: bad
    config or usage, 1: the work failed), instead of a traceback."""
    try:
        yield
    except typer.Exit:  # an inner manager's verdict (typer.Exit is a RuntimeError)
        raise
    except errors as e:
        message = str(e) if isinstance(e, ConfigError) else f"error: {e}"
        typer.secho(message, fg="red", err=True)
        raise typer.Exit(code) from None


def _load(config: Path | None, overrides: list[str] | None, schema):
    """The config file with `--set` overrides, validated (a run config also by its algorithm
    and model family); a bad one ends the command with exit code 2."""
    with _exit_on(ConfigError, code=2):
        if schema is RunConfig:
            from fedumm.validation import load_run_config

            return load_run_config(config, overrides or [])
        return load_config(config, overrides or [], schema)


def _stored_config(run_dir: Path, overrides: list[str] | None) -> RunConfig:
    from fedumm.config import apply_overrides, validate, without_retired
    from fedumm.federation.checkpoint import CheckpointError, read_manifest
    from fedumm.validation import check

    with _exit_on(CheckpointError):
        stored = without_retired(read_manifest(run_dir)["config"])
    with _exit_on(ConfigError, code=2):
        raw = apply_overrides(stored, overrides or [])
        return check(validate(raw, RunConfig, str(run_dir)), str(run_dir))


def _setup_logging(quiet: bool = False) -> None:
    """fedumm's log lines on stderr; `quiet` also silences transformers' progress bars and
    its notices (a model load's 'Loading weights' bar, deprecation chatter)."""
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("fedumm").setLevel(logging.INFO)  # the libraries': warnings only
    if quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


@app.command()
def run(
    config: Annotated[
        Path | None, typer.Argument(help="YAML run config (omit for defaults).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for results.")] = Path(
        "runs/latest"
    ),
    set_: SetOption = None,
    quiet: QuietOption = False,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue the run in this folder from its last checkpoint."),
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Resume even if the config differs from the checkpoint's.")
    ] = False,
    engine: Annotated[
        str | None,
        typer.Option(
            help="embedded (every client in this process), flare (NVIDIA FLARE) or "
            "flower (Flower's simulation)."
        ),
    ] = None,
    flare_env: Annotated[
        str | None, typer.Option(help="With --engine flare: sim (FLARE's simulator) or poc.")
    ] = None,
) -> None:
    """Run a federation plus its baselines; write results.json, report.md and plots to OUT."""
    set_ = [
        *(set_ or []),
        *([f"engine={engine}"] if engine else []),
        *([f"flare.env={flare_env}"] if flare_env else []),
    ]
    if resume is not None and config is None:
        cfg = _stored_config(resume, set_)  # the config the run was started with
    else:
        cfg = _load(config, set_, RunConfig)
    out = resume or out
    _setup_logging(quiet)
    from fedumm.engines import run_federation
    from fedumm.federation.server import RoundFailed

    # ConfigError is a ValueError: the inner manager gives it its own exit code.
    with (
        _exit_on(FileNotFoundError, ValueError, RoundFailed, RuntimeError),
        _exit_on(ConfigError, code=2),
    ):
        results = run_federation(cfg, out, not quiet, resume is not None, force)
    _print_run(results, cfg, out)


def _print_run(results: RunResult, cfg: RunConfig, out: Path) -> None:
    """A finished run in a few lines: each method's headlines, the traffic,
    the time."""
    from fedumm.evaluation.metrics import HEADLINES, headlines
    from fedumm.report import method_rows

    typer.echo("")
    for label, m in method_rows(results):
        scores = ", ".join(
            f"{HEADLINES[k][0].removesuffix(' (%)')} {m[k]:5.1f}%" for k in headlines(m)
        )
        typer.echo(f"  {label:<34} {scores}")
    c = results.communication
    if cfg.lora is None:
        typer.echo(
            f"  full fine-tuning traffic {c.adapter_bytes_per_round / 1e6:.2f} MB/round (measured)"
        )
    else:
        compressed = cfg.federation.compression.summary()
        typer.echo(
            f"  adapter traffic {c.adapter_bytes_per_round / 1e6:.2f} MB/round"
            + (f" ({compressed})" if compressed else "")
            + f" vs full fine-tuning {c.full_finetune_bytes_per_round / 1e6:.2f} MB/round "
            f"({c.ratio:.1f}x less)"
        )
    typer.echo(f"  {results.wall_seconds:.0f} s; report: {out / 'report.md'}")


OverwriteOption = Annotated[
    bool, typer.Option(help="Run again the cells in OUT whose config differs, instead of refusing.")
]
JobsOption = Annotated[
    int,
    typer.Option(
        "--jobs",
        "-j",
        min=1,
        help="Cells run at once, in separate processes sharing the CPU cores (torch threads "
        "per cell: cores / jobs, unless a config sets threads).",
    ),
]


@app.command()
def sweep(
    sweep_file: Annotated[Path, typer.Argument(help="YAML sweep: base config, overrides, grid.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder of the sweep.")] = Path(
        "runs/sweep"
    ),
    set_: SetOption = None,
    quiet: QuietOption = False,
    overwrite: OverwriteOption = False,
    jobs: JobsOption = 1,
) -> None:
    """Run one federation per grid cell (reusing finished cells); write sweep.md/.csv/.png."""
    from fedumm.sweep import load_sweep

    with _exit_on(ConfigError, code=2):
        plan = load_sweep(sweep_file, set_)
    _run_sweep(plan, out, not quiet, overwrite, jobs)
    typer.echo(f"{len(plan.cells)} cells; table: {out / 'sweep.md'}")


@app.command()
def bench(
    name: Annotated[str, typer.Argument(help="A shipped benchmark, e.g. clients-alpha.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default runs/NAME).")
    ] = None,
    set_: SetOption = None,
    quiet: QuietOption = False,
    overwrite: OverwriteOption = False,
    jobs: JobsOption = 1,
) -> None:
    """Run a shipped benchmark sweep (configs/sweeps/NAME.yaml), resuming where it stopped;
    write its tables (bench.md, sweep.md, sweep.csv) and plots to OUT."""
    from fedumm.paper_sweeps import load_bench, write_bench

    with _exit_on(ConfigError, code=2):
        plan = load_bench(name, set_)
    out = out or Path("runs") / name
    rows = _run_sweep(plan, out, not quiet, overwrite, jobs)
    with _exit_on(FileNotFoundError, ValueError):
        typer.echo(write_bench(plan, rows, out))
    typer.echo(f"tables: {out / 'bench.md'}")


def _run_sweep(plan, out: Path, progress: bool, overwrite: bool, jobs: int) -> list[dict]:
    from fedumm.federation.server import RoundFailed
    from fedumm.sweep import run_sweep

    _setup_logging()
    # ConfigError is a ValueError: the inner manager gives it its own exit code.
    with (
        _exit_on(FileNotFoundError, ValueError, RoundFailed, RuntimeError),
        _exit_on(ConfigError, code=2),
    ):
        return run_sweep(plan, out, progress, overwrite, jobs)


def _deployment_config(config: Path, set_: list[str] | None, engine: str, what: str) -> RunConfig:
    """The config an exported `engine` deployment runs: its extra installed, and nothing a
    deployment refuses (RunConfig.check_deployment)."""
    cfg = _load(config, [*(set_ or []), f"engine={engine}"], RunConfig)
    from fedumm.extras import require

    with _exit_on(ConfigError, code=2):
        require(engine, f"fedumm {engine} export")
        cfg.check_deployment(f"an exported {what}", exported=True)
    return cfg


flare_app = typer.Typer(
    help="NVIDIA FLARE: jobs for a provisioned deployment.", no_args_is_help=True
)
app.add_typer(flare_app, name="flare")


@flare_app.command("export")
def flare_export(
    config: Annotated[Path, typer.Argument(help="YAML run config.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the job into.")] = Path(
        "jobs"
    ),
    results: Annotated[
        str, typer.Option(help="Where the server writes results.json, on the server machine.")
    ] = "/tmp/fedumm/results",
    set_: SetOption = None,
) -> None:
    """Write a FLARE job folder to submit to a deployment (nvflare job submit -j JOB)."""
    cfg = _deployment_config(config, set_, "flare", "job")
    from fedumm.engines.flare import export_job

    job = export_job(cfg, out, results)
    k = cfg.federation.num_clients
    typer.echo(f"FLARE job for sites site-1..site-{k}: {job}")
    typer.echo(f"submit it from an admin console: nvflare job submit -j {job}")


flower_app = typer.Typer(
    help="Flower: apps for a SuperLink and its SuperNodes.", no_args_is_help=True
)
app.add_typer(flower_app, name="flower")


@flower_app.command("export")
def flower_export(
    config: Annotated[Path, typer.Argument(help="YAML run config.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the app into.")] = Path(
        "flower-app"
    ),
    results: Annotated[
        str,
        typer.Option(
            help="Where the ServerApp writes results.json, on the SuperLink's "
            "machine (an absolute path)."
        ),
    ] = "/tmp/fedumm/results",
    superlink: Annotated[
        str,
        typer.Option(
            help="The SuperLink's address as the SuperNodes reach it, HOST:PORT "
            "(the generated TLS certificate is for HOST)."
        ),
    ] = "127.0.0.1:8000",
    set_: SetOption = None,
) -> None:
    """Write a Flower app folder that `flwr run` deploys on a SuperLink and its SuperNodes,
    with TLS certificates, the SuperNodes' authentication keys and README.md: the commands."""
    cfg = _deployment_config(config, set_, "flower", "app")
    with _exit_on(ConfigError, code=2):
        if not Path(results).is_absolute():
            raise ConfigError(
                f"--results {results}: give an absolute path (the ServerApp runs "
                "in the SuperLink's folder)"
            )
        host, _, port = superlink.rpartition(":")
        host = host.strip("[]")  # [::1]:8000
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"--superlink {superlink}: expected HOST:PORT")
        from fedumm.engines.flower import export_deployment

        readme = export_deployment(cfg, out, results, host, int(port))
    k = cfg.federation.num_clients
    typer.echo(f"Flower app for {k} SuperNodes: {out}")
    if cfg.flower.certificates is None:
        typer.echo(
            f"TLS certificate (for {host}) and SuperNode keys: {out / 'certificates'}; "
            "each site-K.key goes to site K only"
        )
    typer.echo(
        f"start the SuperLink with TLS and --enable-supernode-auth, register each site's key, "
        f'start each SuperNode with its key and --node-config "partition-id=K num-partitions='
        f'{k}" (K = 0..{k - 1} is site-K+1), then flwr run: the commands are in {readme}'
    )


@app.command()
def partition(
    config: Annotated[Path, typer.Argument(help="YAML run config.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path(
        "runs/partition"
    ),
    set_: SetOption = None,
) -> None:
    """Write the clients' partition without training: partition.json and heatmaps."""
    _setup_logging(quiet=True)
    cfg = _load(config, set_, RunConfig)
    from fedumm.clients import write_partition

    with _exit_on(FileNotFoundError, ValueError):
        summary = write_partition(cfg, out)
    from fedumm.partition_report import ClientTable, describe_sizes, repair_lines

    table = ClientTable.of(summary)
    if table.summarized:  # one line per client would scroll 100,000 lines past
        typer.echo(f"  {describe_sizes(table)}")
    for client in summary.get("clients", []):
        held = ", ".join(f"{t} {s['samples']}" for t, s in client["tasks"].items())
        kept = client["tasks"].get("classification", {}).get("modalities", {})
        keeps = "; keeps " + ", ".join(f"{m} {n}" for m, n in kept.items() if n) if kept else ""
        typer.echo(f"  {client['client_id']:<10} {client['samples']:>6} samples ({held}){keeps}")
    for line in repair_lines(summary):
        typer.echo(f"  {line}")
    scenario = f", {summary['modality']}" if "modality" in summary else ""
    typer.echo(f"{summary['description']}{scenario}; {out / 'partition.json'}, heatmaps in {out}")


RunArgument = Annotated[Path, typer.Argument(help="A finished run's output folder.")]
ClientOption = Annotated[
    str | None,
    typer.Option(help="A personalized run's client (e.g. site-1): its own model, not the global."),
]


def _open_run(folder: Path, client: str | None = None):
    from fedumm.trained import open_run

    with _exit_on(FileNotFoundError, ValueError):
        return open_run(folder, client)


@app.command()
def export(
    run_dir: RunArgument,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write.")],
    merge: Annotated[
        bool,
        typer.Option(
            help="Merge the adapter into the base: a plain model "
            "folder that loads without fedumm or peft."
        ),
    ] = False,
    client: ClientOption = None,
) -> None:
    """Export a run's trained adapter (peft format), or the base with it merged."""
    run = _open_run(run_dir, client)
    _setup_logging(quiet=True)
    from fedumm.trained import export as export_run

    with _exit_on(FileNotFoundError, ValueError, OSError):
        folder = export_run(run, out, merge)
    if merge or run.adapter is None:
        typer.echo(f"model saved to {folder}: AutoModel*.from_pretrained({str(folder)!r})")
    else:
        typer.echo(f"adapter saved to {folder}: PeftModel.from_pretrained(base, {str(folder)!r})")
        if (folder / "folded_deltas.safetensors").is_file():
            typer.secho(
                "its strategy folds updates into the base weights "
                "(folded_deltas.safetensors): only fedumm or --merge reproduces the "
                "model",
                fg="yellow",
                err=True,
            )


@app.command("eval")
def evaluate(
    run_dir: RunArgument,
    config: Annotated[
        Path | None,
        typer.Argument(help="YAML config naming the data to score on (omit: the run's own)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Folder for eval.json and eval.md (default RUN/eval)."),
    ] = None,
    baseline: Annotated[
        str | None, typer.Option(help="zero_shot: score the base alone beside it.")
    ] = None,
    client: ClientOption = None,
    set_: SetOption = None,
    quiet: QuietOption = False,
) -> None:
    """Score a run's trained model on the test data a config names, without training."""
    run = _open_run(run_dir, client)
    if baseline not in (None, "zero_shot"):
        typer.secho(
            f"error: --baseline {baseline!r}; the one baseline is zero_shot", fg="red", err=True
        )
        raise typer.Exit(2)
    cfg = _load(config, set_, RunConfig) if config else _stored_config_of(run, set_)
    _setup_logging(quiet)
    from fedumm.evaluation.metrics import HEADLINES, headlines
    from fedumm.results import EvalResult
    from fedumm.runtime import resolve
    from fedumm.trained import evaluate as evaluate_run

    out = out or run_dir / "eval"
    with _exit_on(FileNotFoundError, ValueError, RuntimeError):
        result = EvalResult.of(
            evaluate_run(run, cfg, baseline is not None, resolve(cfg.runtime), out)
        )
    for label, m in [("zero-shot", result.zero_shot), ("trained", result.metrics)]:
        if m is not None:
            scores = ", ".join(
                f"{HEADLINES[k][0].removesuffix(' (%)')} {m[k]:5.1f}%" for k in headlines(m)
            )
            typer.echo(f"  {label:<10} {scores}")
    typer.echo(f"  {result.wall_seconds:.0f} s; {out / 'eval.json'}, {out / 'eval.md'}")


def _stored_config_of(run, overrides: list[str] | None) -> RunConfig:
    """The run's own config, with `--set` overrides."""
    from fedumm.config import apply_overrides, validate
    from fedumm.validation import check

    if not overrides:
        return run.config
    with _exit_on(ConfigError, code=2):
        raw = apply_overrides(run.config.model_dump(), overrides)
        return check(validate(raw, RunConfig, str(run.folder)), str(run.folder))


@app.command()
def ask(
    run_dir: RunArgument,
    image: Annotated[Path, typer.Option(help="The image file to ask about.")],
    question: Annotated[str, typer.Option(help="The question.")],
    client: ClientOption = None,
) -> None:
    """Ask a run's trained model a question about an image."""
    run = _open_run(run_dir, client)
    _setup_logging(quiet=True)
    from fedumm.runtime import resolve
    from fedumm.trained import ask as ask_run

    with _exit_on(FileNotFoundError, ValueError):
        if not image.is_file():
            raise FileNotFoundError(f"{image}: no such image file")
        answer = ask_run(run, image, question, resolve(run.config.runtime))
    typer.echo(answer or EMPTY_ANSWER)


@app.command()
def draw(
    run_dir: RunArgument,
    prompt: Annotated[list[str], typer.Option(help="What to draw (repeatable: one image each).")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="PNG to write (several prompts: side by side).")
    ] = Path("drawn.png"),
    seed: SeedOption = 0,
    client: ClientOption = None,
) -> None:
    """Draw with a run's trained model (for models that draw: the built-in one, Janus)."""
    run = _open_run(run_dir, client)
    _setup_logging(quiet=True)
    import numpy as np
    from PIL import Image

    from fedumm.runtime import resolve
    from fedumm.trained import draw as draw_run

    with _exit_on(FileNotFoundError, ValueError):
        images = draw_run(run, prompt, seed, resolve(run.config.runtime))
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(list(images), axis=1)).save(out)
    typer.echo(f"{len(images)} image(s), {images.shape[1]}x{images.shape[2]} px: {out}")


@app.command()
def pretrain(
    config: Annotated[Path | None, typer.Argument(help="YAML pretraining config.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the checkpoint.")] = Path(
        "runs/foundation"
    ),
    set_: SetOption = None,
) -> None:
    """Pretrain a foundation: captions, caption-to-image, and optionally short captions, questions
    of some families and image-caption matching (configs/pretrain.yaml rebuilds the default)."""
    cfg: PretrainConfig = _load(config, set_, PretrainConfig)
    from tqdm.auto import tqdm

    from fedumm.pretraining import pretrain as run_pretraining

    with tqdm(total=cfg.steps, desc="pretraining", unit="step") as bar:

        def on_step(step: int, loss: float) -> None:
            bar.update()
            if step % 20 == 0:
                bar.set_postfix(loss=f"{float(loss):.3f}")

        with _exit_on(RuntimeError), _exit_on(ConfigError, code=2):
            metrics = run_pretraining(cfg, out, on_step=on_step)
    typer.echo(json.dumps(metrics, indent=2))
    key = "model.name_or_path" if cfg.architecture == "janus" else "model.foundation"
    typer.echo(f"foundation saved to {out}; use it with --set {key}={out}")


FamilyArgument = Annotated[
    str,
    typer.Argument(
        help="llava, qwen2_vl, qwen2_5_vl, idefics3, smolvlm, paligemma, chameleon or janus."
    ),
]
ModelOutOption = Annotated[Path, typer.Option("--out", "-o", help="Folder for the model.")]


@app.command("random-model")
def random_model(
    family: FamilyArgument,
    out: ModelOutOption,
    preset: Annotated[
        str,
        typer.Option(
            help="tiny, or a published architecture of FAMILY: "
            "llava-1.5-7b, qwen2-vl-2b, qwen2.5-vl-3b, "
            "qwen2.5-vl-7b, paligemma-3b, smolvlm-256m, "
            "chameleon-7b, janus-pro-1b, janus-pro-7b."
        ),
    ] = "tiny",
    dtype: Annotated[
        str,
        typer.Option(
            help="float32, bfloat16 or float16 weights (bfloat16 "
            "halves the folder of a published size)."
        ),
    ] = "float32",
    seed: SeedOption = 0,
) -> None:
    """Save a Hugging Face model of FAMILY with RANDOM weights, built offline at a preset's
    size, to run by path: for measuring memory and speed where no weights can be fetched."""
    from fedumm.models import DTYPES
    from fedumm.models.architectures import build_random

    with _exit_on(ValueError, KeyError, code=2):
        if dtype not in DTYPES:
            raise ValueError(f"--dtype {dtype!r}; expected {', '.join(DTYPES)}")
        build_random(family, out, preset, seed, DTYPES[dtype])
    typer.secho(
        f"UNTRAINED: {out} holds a {preset} {family} architecture with random weights; "
        "it measures memory and speed, and its scores mean nothing.",
        fg="yellow",
        err=True,
    )
    typer.echo(f"saved to {out}; use it with --set model.name_or_path={out}")


@app.command("tiny-model")
def tiny_model(family: FamilyArgument, out: ModelOutOption, seed: SeedOption = 0) -> None:
    """Save a tiny random Hugging Face model of FAMILY, built offline, to run by path (the
    same as `random-model FAMILY --preset tiny`)."""
    random_model(family, out, "tiny", "float32", seed)


@app.command()
def identities(
    out: Annotated[Path, typer.Argument(help="Folder to write (rootCA.pem, site-K.crt/.key).")],
    sites: Annotated[int, typer.Option(help="How many sites: site-1..site-N.", min=1)] = 8,
) -> None:
    """Write a root certificate and a signing identity per site, for secure aggregation's
    signed keys (federation.secure_aggregation: {signed_keys: true, identities: OUT}). Give
    each site its own .key and .crt, and every site rootCA.pem; keep the root's key nowhere
    (it is not written: no further identity can be issued from this folder)."""
    from fedumm.federation.client import site_names
    from fedumm.federation.identity import write_identities

    write_identities(out, site_names(sites))
    typer.echo(f"wrote rootCA.pem and {sites} site identities (site-1..site-{sites}) to {out}")


@app.command()
def config(
    pretraining: Annotated[
        bool, typer.Option("--pretrain", help="The pretraining schema.")
    ] = False,
) -> None:
    """Print every config key with its default and description (a valid YAML config), and
    each algorithm's parameters (set beside federation.strategy.name)."""
    from fedumm.config import StrategyConfig, annotated_defaults

    if pretraining:
        typer.echo(annotated_defaults(PretrainConfig))
        return
    from fedumm.federation.strategies import STRATEGIES

    notes = ["the parameters an algorithm takes, set beside its name (the others take none):"]
    for name, cls in STRATEGIES.items():
        if cls.Params.model_fields:
            notes += [f"{name}:", *annotated_defaults(cls.Params, 1).splitlines()]
    typer.echo(annotated_defaults(RunConfig, notes={StrategyConfig: notes}))


@app.command()
def strategies() -> None:
    """List the FL algorithms a config may name (federation.strategy.name), each with what
    federation.compression compresses of its messages, its parameters, their defaults and what
    they are (set them as federation.strategy.<key>)."""
    from fedumm.federation.strategies import STRATEGIES

    for name, cls in STRATEGIES.items():
        typer.echo(f"{name:<14} {cls.paper}")
        typer.echo(f"    {'compressed:':<24} {cls.compresses}")
        for key, field in cls.Params.model_fields.items():
            typer.echo(f"    {f'{key}: {field.default:g}':<24} {field.description}")


if __name__ == "__main__":
    app()
