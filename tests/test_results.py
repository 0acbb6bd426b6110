"""results.json as a typed RunResult: the same text back, old files loading, clear errors."""

import json
from pathlib import Path

import pytest

from fedumm.results import (
    ClientLevelPrivacy,
    ResultsError,
    RoundResult,
    RunResult,
    SampleLevelPrivacy,
    dump_json,
)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "results"
TINY = FIXTURES / "tiny_run.json"  # dp_fedavg + DP-SGD + an attack, every baseline, 2 rounds
OLD = FIXTURES / "before_runtime.json"  # written by fedumm of 2026-11-23 (b95b4b3)


def test_a_run_s_results_go_through_the_model_to_the_same_text():
    text = TINY.read_text()
    raw = json.loads(text)
    result = RunResult.from_dict(raw)
    assert result.dump() == text
    assert list(result.to_dict()) == list(raw) and result.to_dict() == raw
    # typed all the way down
    first = result.rounds[0]
    assert isinstance(first, RoundResult) and first.round == 1
    assert first.bytes_up == raw["rounds"][0]["bytes_up"]
    site, client = next(iter(first.client_metrics.items()))
    assert client.steps == raw["rounds"][0]["client_metrics"][site]["steps"]
    assert isinstance(result.privacy, ClientLevelPrivacy) and result.privacy.rounds == 2
    assert isinstance(result.dp_sgd, SampleLevelPrivacy) and set(result.dp_sgd.per_client) == {
        "site-1",
        "site-2",
        "site-3",
    }
    assert result.attack.clients == raw["attack"]["clients"]
    assert list(result.baselines.present()) == ["zero_shot", "local", "centralized"]
    assert [c.client_id for c in result.baselines.local.clients] == ["site-1", "site-2", "site-3"]
    assert result.communication.total_bytes == sum(r.bytes_up + r.bytes_down for r in result.rounds)
    assert result.setup_seconds.total > 0 and result.runtime.precision == "fp32"
    cfg = result.run_config()
    assert cfg.federation.strategy.name == "dp_fedavg" and cfg.federation.rounds == 2


def test_every_results_file_shipped_loads_and_dumps_as_it_was_written():
    shipped = sorted((ROOT / "docs" / "results").rglob("results.json"))
    files = [*shipped, *sorted(FIXTURES.glob("*.json"))]
    assert len(files) >= 2
    for path in files:
        text = path.read_text()
        result = RunResult.load(path)
        # dump_json only joins lists of numbers onto one line: a file it wrote is unchanged
        assert result.dump() == dump_json(json.loads(text)), path
        result.run_config()


def test_a_results_file_from_before_runtime_and_setup_seconds_loads():
    result = RunResult.load(OLD)
    raw = json.loads(OLD.read_text())
    assert "runtime" not in raw and "setup_seconds" not in raw
    assert result.runtime is None and result.setup_seconds is None
    assert "secagg_bytes" not in raw["rounds"][0]
    assert result.rounds[0].secagg_bytes == 0 and result.rounds[0].aborted is None
    assert result.dump() == OLD.read_text()  # nothing added: the defaults are not written
    assert result.final.metrics["vqa_accuracy"] == raw["final"]["metrics"]["vqa_accuracy"]
    assert result.run_config().federation.num_clients == 3


def test_keys_the_model_does_not_declare_are_kept_where_they_were():
    raw = json.loads(TINY.read_text())
    keys = list(raw)
    at = keys.index("communication")
    raw = (
        {k: raw[k] for k in keys[:at]}
        | {"future": {"b": 1, "a": [1, 2]}}
        | {k: raw[k] for k in keys[at:]}
    )
    raw["rounds"][0]["weather"] = "fine"
    again = RunResult.from_dict(raw).to_dict()
    assert list(again) == list(raw) and again == raw
    assert list(again["rounds"][0])[-1] == "weather"


def test_a_result_built_in_code_writes_the_keys_in_results_json_order():
    raw = json.loads(TINY.read_text())
    loaded = RunResult.from_dict(raw)
    fields = {name: getattr(loaded, name) for name in reversed(list(raw))}
    built = RunResult(**fields)
    assert list(built.to_dict()) == list(raw)
    assert built.dump() == TINY.read_text()


def test_a_malformed_results_file_names_the_file_and_the_key(tmp_path):
    raw = json.loads(TINY.read_text())
    del raw["rounds"][1]["bytes_up"]
    raw["wall_seconds"] = "soon"
    path = tmp_path / "results.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ResultsError) as e:
        RunResult.load(path)
    message = str(e.value)
    assert str(path) in message
    assert "rounds.1.bytes_up: Field required" in message
    assert "wall_seconds: Input should be a valid number" in message

    del raw["communication"]
    raw["wall_seconds"] = 1.0
    raw["rounds"][1]["bytes_up"] = 3
    path.write_text(json.dumps(raw))
    with pytest.raises(ResultsError, match=r"results.json: not a fedumm results file:\n"):
        RunResult.load(path)
    with pytest.raises(ResultsError, match="communication: Field required"):
        RunResult.load(path)

    path.write_text('{"config": ')
    with pytest.raises(ResultsError, match=f"{path}: not JSON"):
        RunResult.load(path)
    path.write_text("[]")
    with pytest.raises(ResultsError, match=f"{path}: not a fedumm results file"):
        RunResult.load(path)
