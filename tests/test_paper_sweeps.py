"""`fedumm bench NAME`: the shipped benchmarks run as a user runs them, at tiny scale."""

import json
import re
import subprocess
import sys

import pytest

from fedumm.cli import app
from fedumm.paper_sweeps import (
    PROJECTED,
    available,
    fedmllm,
    load_bench,
    privacy,
    projection,
    robustness,
    write_bench,
)
from fedumm.results import RunResult
from fedumm.sweep import label, run_sweep
from tests.tiny import TINY_RUN, runner


def _bench(name, out, foundation, *dropped):
    """`fedumm bench NAME` with TINY_RUN, except the keys the benchmark's grid varies."""
    args = ["bench", name, "-o", str(out), "--quiet", "--set", f"model.foundation={foundation}"]
    for item in TINY_RUN:
        if not item.startswith(dropped):
            args += ["--set", item]
    return runner.invoke(app, args)


def _section(text, title):
    """The part of a bench.md from the heading starting with `title` to the next heading."""
    return text.split(title, 1)[1].split("\n## ", 1)[0]


def _table_rows(text, first_cell):
    """The cells of every markdown table row whose first cell starts with `first_cell`."""
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith(f"| {first_cell}")
    ]


def test_every_shipped_benchmark_loads():
    assert {"clients-alpha", "communication", "compute-communication"} <= set(available())
    for name in available():
        assert load_bench(name).cells


def test_an_unknown_benchmark_lists_the_shipped_ones(tmp_path):
    result = runner.invoke(app, ["bench", "clients_alpha", "-o", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "unknown benchmark 'clients_alpha'" in result.output
    listed = "clients-alpha, communication, compression, compression-unified, compute-"
    assert listed in result.output
    assert not (tmp_path / "x").exists()


def test_communication_bench_measures_adapter_against_full_finetuning(tiny_foundation, tmp_path):
    out = tmp_path / "communication"
    result = _bench("communication", out, tiny_foundation, "lora.")
    assert result.exit_code == 0, result.output
    text = (out / "bench.md").read_text()
    full = _table_rows(text, "full fine-tuning")[0]
    ranks = {int(row[0].split("=")[1]): row for row in _table_rows(text, "LoRA r=")}
    assert sorted(ranks) == [4, 8, 16, 32] and full[3] == "1.0x"
    ratios = [float(ranks[r][3].rstrip("x")) for r in (4, 8, 16, 32)]
    # A bigger rank sends more; on this 32-wide model r=32 even outweighs the model itself.
    assert ratios == sorted(ratios, reverse=True) and ratios[0] > 1.0 > ratios[-1]
    for row in [full, *ranks.values()]:  # everyone reaches the lowest final score
        assert row[5] != "not reached" and float(row[6]) > 0
    # Published backbones, counted from their architectures: the 7B at r=8 is 1643x smaller.
    qwen7 = {row[2]: row for row in _table_rows(text, "Qwen2.5-VL-7B")}
    assert qwen7["8"][1] == "8.29 B" and qwen7["8"][3] == "5,046,272" and qwen7["8"][6] == "1,643x"


def test_compute_communication_bench_draws_accuracy_against_bytes(tiny_foundation, tmp_path):
    out = tmp_path / "cc"
    result = _bench(
        "compute-communication", out, tiny_foundation, "federation.rounds", "federation.local_steps"
    )
    assert result.exit_code == 0, result.output
    text = (out / "bench.md").read_text()
    rows = {int(r[1]): r for r in _table_rows(text, "") if re.fullmatch(r"\d+", r[0])}
    assert sorted(rows) == [4, 10, 20]
    assert {rows[n][2] for n in rows} == {"200"}  # the same local compute in every cell
    sent = {}
    for cell in (out / "cells").iterdir():
        res = RunResult.load(cell / "results.json")
        sent[res.run_config().federation.rounds] = sum(
            r.bytes_up + r.bytes_down for r in res.rounds
        )
    assert sent[20] == 5 * sent[4] == 2 * sent[10]  # bytes grow with rounds, not local steps
    assert {n: rows[n][3] for n in rows} == {n: f"{b / 1e6:.1f}" for n, b in sent.items()}
    assert (out / "curve.png").stat().st_size > 0 and "![accuracy against bytes" in text


COMPRESSION_SETTINGS = [
    "none",
    "fp16",
    "int8",
    "int4",
    "top-k 10%",
    "top-k 10% int8",
    "top-k 10% + EF",
    "sign + EF",
    "top-k 1%",
    "top-k 1% + EF",
    "top-k 1% int8 + EF",
]


@pytest.mark.parametrize("name", ["compression", "compression-unified"])
def test_the_compression_sweeps_hold_every_setting_and_three_seeds(name):
    sweep = load_bench(name)
    assert len(sweep.cells) == len(COMPRESSION_SETTINGS) * 3
    settings = list(dict.fromkeys(label(c.values["setting"]) for c in sweep.cells))
    assert settings == COMPRESSION_SETTINGS
    assert {c.values["seed"] for c in sweep.cells} == {0, 1, 2}
    assert {c.config.seed for c in sweep.cells} == {0, 1, 2}
    uploads = {
        label(c.values["setting"]): c.config.federation.compression.upload for c in sweep.cells
    }
    assert (
        uploads["top-k 1% int8 + EF"].values == "int8" and uploads["top-k 1% + EF"].error_feedback
    )
    assert not uploads["top-k 1%"].error_feedback and uploads["top-k 10%"].fraction == 0.1
    for cell in sweep.cells:  # the cells run no baseline; the reference both the plot draws
        assert cell.config.federation.compression.broadcast.scheme == "none"
        assert not any(
            dict(cell.config.baselines).get(b) for b in ("zero_shot", "local", "centralized")
        )
    ref = sweep.reference.config
    assert ref.baselines.zero_shot and ref.baselines.centralized and ref.seed == 0
    assert ref.federation.compression.upload.scheme == "none"
    if name == "compression":  # the quick start schedule as it ships
        fed = sweep.cells[0].config.federation
        assert (fed.rounds, fed.local_steps, fed.client_sampling) == (48, 10, "cyclic")
    else:
        assert sweep.cells[0].config.data.tasks == ["vqa", "generation"]


@pytest.mark.parametrize(  # the unified one writes both metrics' tables and panels
    "name", [pytest.param("compression", marks=pytest.mark.slow), "compression-unified"]
)
def test_compression_bench_tables_targets_and_plot(tiny_foundation, tmp_path, name):
    """The shipped sweep at tiny scale, on three of its settings and two seeds."""
    tiny = [*TINY_RUN, f"model.foundation={tiny_foundation}", "federation.rounds=4", "eval.every=2"]
    sweep = load_bench(name, tiny)
    kept = ("none", "int8", "top-k 1% int8 + EF")
    sweep.cells = [
        c for c in sweep.cells if label(c.values["setting"]) in kept and c.values["seed"] < 2
    ]
    out = tmp_path / name
    rows = run_sweep(sweep, out, progress=False)
    write_bench(sweep, rows, out)
    text = (out / "bench.md").read_text()
    measured = _section(text, "## Compressed uploads")
    table = {row[0]: row for row in _table_rows(measured, "") if row[0] in kept}
    assert list(table) == list(kept)
    none, int8, sparse = (table[k] for k in kept)
    assert none[2] == "1.0x" and float(int8[2].rstrip("x")) > 2.5
    assert float(sparse[2].rstrip("x")) > float(int8[2].rstrip("x"))
    assert none[5] == "+0.0 +- 0.0"  # the change against itself, seed by seed
    metrics = ["VQA accuracy"] + (["GenEval overall"] if name == "compression-unified" else [])
    for metric in metrics:
        assert f"{metric} (%) | {metric}: change (points)" in text
        assert f"- {metric}, int8 within 0.5 points" in text
        assert f"- {metric}, a setting with >= 16x fewer upload bytes within 2 points" in text
    projected = {row[0]: row for row in _table_rows(_section(text, "## Projected to 7B"), "")}
    assert list(projected)[1:] == list(kept) and len(projected["int8"]) == 1 + 2 * len(PROJECTED)
    assert projected["none"][2] == "1.0x" and projected["int8"][2] == "3.9x"
    assert (out / "compression.png").stat().st_size > 0 and "(compression.png)" in text
    # The reference's baselines drawn in the plot ran once, on seed 0 without compression.
    ref = RunResult.load(out / "reference" / "results.json")
    assert set(ref.baselines.present()) == {"zero_shot", "centralized"}


def test_projected_int8_upload_is_a_quarter_of_fp32():
    """Encoded from tensors of the 7B adapters' shapes: int8 is 1 byte a value plus a bf16 scale
    per 64, a quarter of fp32 and 3% more; top-k 1% int8 keeps 5 bytes (int32 index, int8
    value) of every hundred values; top-k 10% int8 sends a bitmap of the positions."""
    from fedumm.config import CodecConfig

    settings = {
        "none": CodecConfig(),
        "int8": CodecConfig(scheme="int8"),
        "top-k 1% int8": CodecConfig(scheme="topk", fraction=0.01, values="int8"),
        "top-k 10% int8": CodecConfig(scheme="topk", fraction=0.1, values="int8"),
    }
    rows = {row[0]: row[1:] for row in projection(settings)}
    for (plain, _), (int8, ratio), (sparse, _) in zip(
        rows["none"], rows["int8"], rows["top-k 1% int8"]
    ):
        assert plain > 4 * 7_800_000  # LLaVA-1.5-7B: 8,388,608 values; Janus-Pro-7B: 7,864,320
        assert abs(int8 - plain / 4) <= 0.05 * plain / 4 and ratio == plain / int8
        assert abs(sparse - 0.05 * plain / 4) <= 0.05 * 0.05 * plain / 4
    # Top-k 10%: its positions as a bitmap (1/8 byte a value), its values in int8: >= 16x.
    assert all(ratio >= 16 for _, ratio in rows["top-k 10% int8"])


def test_robustness_tables_per_client_setting_and_the_3_point_check(tmp_path):
    from types import SimpleNamespace

    axes = {"clients": None, "attack.kind": None, "federation.strategy": None}
    sweep = SimpleNamespace(cells=[SimpleNamespace(values=axes)])
    scores = {
        ("IID", "none", "name=fedavg"): 40.0,
        ("IID", "none", "name=median"): 38.0,
        ("IID", "sign_flip", "name=fedavg"): 2.5,
        ("IID", "sign_flip", "name=median"): 37.0,
        ("skew", "none", "name=fedavg"): 30.0,
        ("skew", "none", "name=median"): 30.0,
        ("skew", "sign_flip", "name=fedavg"): 1.0,
        ("skew", "sign_flip", "name=median"): 26.9,
    }
    rows = [
        {"clients": c, "attack.kind": k, "federation.strategy": r, "vqa_accuracy": a}
        for (c, k, r), a in scores.items()
    ]
    text = "\n".join(robustness(sweep, rows, tmp_path))
    iid, skew = text.split("(skew)")
    assert "(IID)" in iid and "| sign_flip | 2.5 (-37.5) | 37.0 (-1.0) |" in iid
    assert "every attack: name=median." in iid
    assert "| sign_flip | 1.0 (-29.0) | 26.9 (-3.1) |" in skew and "every attack: none." in skew
    assert (tmp_path / "attacks.png").stat().st_size > 0 and "(attacks.png)" in skew


def test_privacy_table_from_rows(tmp_path):
    rows = [
        {"federation.strategy.noise_multiplier": z, "epsilon": e, "delta": 1e-5, "vqa_accuracy": a}
        for z, e, a in [(0.0, None, 33.0), (1.0, 12.71, 20.0)]
    ]
    table = "\n".join(privacy(None, rows, tmp_path))
    assert "| 0.0 | inf (no noise) | 33.0 |" in table and "| 1.0 | 12.71 | 20.0 |" in table


def test_fedmllm_table_puts_local_first_and_checks_the_papers_findings(tmp_path):
    from types import SimpleNamespace

    from fedumm.sweep import Cell

    scores = {
        ("FedAvg", "alpha=5.0"): 70.0,
        ("FedAvg", "alpha=0.5"): 50.0,
        ("FedProx", "alpha=5.0"): 80.0,
        ("FedProx", "alpha=0.5"): 16.0,
    }
    rows = []
    for (method, scenario), acc in scores.items():
        row = {"method": method, "scenario": scenario, "classification_accuracy": acc}
        if method == "FedAvg":  # the cells that ran the local-only baseline
            row["local_classification_accuracy"] = {"alpha=5.0": 30.0, "alpha=0.5": 17.0}[scenario]
        rows.append(row)
    sweep = SimpleNamespace(cells=[Cell("c", {"method": None, "scenario": None}, None)])
    text = "\n".join(fedmllm(sweep, rows, tmp_path))
    assert "| method | alpha=5.0 | alpha=0.5 |" in text
    assert text.index("| Local | 30.0 | 17.0 |") < text.index("| FedAvg | 70.0 | 50.0 |")
    assert "in 1 of 2 scenarios" in text  # FedProx falls below local-only at alpha=0.5
    assert "alpha=5.0 +50.0 / +40.0, alpha=0.5 +33.0 / -1.0" in text
    # local-only loses 13.0, FedAvg 20.0 and FedProx 64.0: local-only does not degrade most
    assert "local-only loses 13.0 points; the federated methods lose 20.0 to 64.0" in text
    assert "does not degrade most" in text


def test_the_gpu_benchmark_runs_at_tiny_scale_on_the_cpu(tmp_path):
    """benchmarks/gpu.py is measured on a GPU; here it must run end to end at tiny scale."""
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [
            sys.executable,
            "benchmarks/gpu.py",
            "--device",
            "cpu",
            "--preset",
            "tiny",
            "--seq",
            "40",
            "--batch",
            "2",
            "--steps",
            "2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for line in ("(a) plain torch + peft:", "(b) fedumm client training:", "(c) 8-client round:"):
        assert line in done.stdout
    figures = json.loads(out.read_text())
    assert figures["plain_samples_per_s"] > 0 and figures["fedumm_samples_per_s"] > 0
    assert figures["round_overhead"] >= 1.0  # a round includes the clients' work
