"""report.md and its plots from a RunResult: a row per method, round and client."""

import json
from pathlib import Path

from fedumm.report import method_rows, write_report
from fedumm.results import RunResult

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "results"


def _tiny() -> RunResult:
    """A 2-round run of 3 clients: dp_fedavg with DP-SGD, site-3 flipping signs, every
    baseline."""
    return RunResult.load(FIXTURES / "tiny_run.json")


def test_the_report_has_a_row_per_method_round_and_client_and_its_plots(tmp_path):
    result = _tiny()
    write_report(result, tmp_path)
    text = (tmp_path / "report.md").read_text()
    lines = text.splitlines()
    assert lines[0] == "# fedumm run report"
    assert lines[2].startswith("Model: foundation builtin. 3 clients (2 per round, cyclic")
    assert "2 rounds x 2 local steps at lr " in lines[2] and ", LoRA r=2, seed 0. " in lines[2]
    assert lines[2].endswith(" threads, fp32.")
    final = result.final.metrics["vqa_accuracy"]
    central = result.baselines.centralized.metrics["vqa_accuracy"]
    methods = [
        "| zero-shot foundation | **",
        "| local-only (mean over clients) | **",
        f"| federated LoRA (dp_fedavg) | **{final:.1f}** |",
        f"| centralized LoRA | **{central:.1f}** |",
    ]
    at = [next(i for i, line in enumerate(lines) if line.startswith(m)) for m in methods]
    assert at == sorted(at)
    assert " ± " in lines[at[1]]  # local-only: the spread over clients
    share = 100 * final / max(central, 1e-9)
    assert f"Federated reaches **{share:.1f}%** of centralized." in text
    epsilon = result.privacy.epsilon
    assert f"Privacy, client-level (DP-FedAvg): epsilon {epsilon:.2f} at delta 1e-05" in text
    assert "clients sampled by the cyclic (predictable: accounted with q = 1)." in text
    assert "Privacy, sample-level (DP-SGD): epsilon " in text
    c = result.communication
    assert f"Adapter-only federation sends **{c.ratio:.1f}x** less" in text
    assert result.rounds[0].metrics == {}  # evaluated after the last round only
    for r, score in zip(result.rounds, ["", f"{final:.1f}"]):
        row = f"| {r.round} | {score} | {r.bytes_up:,} | {r.bytes_down:,} | {r.seconds:.1f} |"
        assert row + " 0 / 0 / 0 |" in lines, row
    clients = [line for line in lines if line.startswith("| site-")]
    assert [line.split(" | ")[0] for line in clients] == ["| site-1", "| site-2", "| site-3"]
    assert all(" | vqa (answer) | " in line for line in clients)
    for png in ("accuracy.png", "communication.png", "partition_vqa.png"):
        assert (tmp_path / png).stat().st_size > 0 and f"]({png})" in text


def test_without_baselines_the_federation_is_the_one_row(tmp_path):
    raw = json.loads((FIXTURES / "tiny_run.json").read_text())
    raw["baselines"] = {}
    result = RunResult.from_dict(raw)
    assert [label for label, _ in method_rows(result)] == ["federated LoRA (dp_fedavg)"]
    write_report(result, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "of centralized" not in text and "| zero-shot foundation |" not in text


def test_a_run_from_before_runtime_was_recorded_still_gets_its_report(tmp_path):
    write_report(RunResult.load(FIXTURES / "before_runtime.json"), tmp_path)
    setup = (tmp_path / "report.md").read_text().splitlines()[2]
    assert " rounds x 2 local steps " in setup and setup.endswith(" s.")  # no device known
    assert (tmp_path / "accuracy.png").stat().st_size > 0
