"""The Flower engine: Flower's simulation runtime gives the embedded engine's adapter, bytes,
losses and scores for FedAvg, SCAFFOLD (control variates in the nodes' state) and FedSA-LoRA
(personalized: nodes score their own models); an exported app deployed with `flwr run` on a
local SuperLink and two SuperNodes, separate processes, all stopped afterwards."""

import json
import os
import time

import psutil
import pytest
from safetensors.torch import load_file

from fedumm.cli import app
from tests.tiny import run_tiny, runner

TWO_CLIENTS = ["federation.num_clients=2", "federation.clients_per_round=2", "threads=1",
               "baselines.local=false", "baselines.centralized=false"]  # fmt: skip


def _runs(tmp_path, foundation, *overrides):
    runs = {}
    for engine in ("embedded", "flower"):
        out = tmp_path / engine
        result = run_tiny(out, foundation, *TWO_CLIENTS, *overrides, cli=["--engine", engine])
        assert result.exit_code == 0, result.output
        runs[engine] = (json.loads((out / "results.json").read_text()),
                        load_file(out / "global_adapter.safetensors"))  # fmt: skip
    return runs


def _assert_same(runs):
    (embedded, a), (flower, b) = runs["embedded"], runs["flower"]
    assert flower["final"]["metrics"] == embedded["final"]["metrics"]
    assert a.keys() == b.keys() and len(a) > 0
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5
    assert max(float(a[k].abs().max()) for k in a) > 1e-3  # the adapter did train
    for mine, theirs in zip(embedded["rounds"], flower["rounds"], strict=True):
        assert (mine["bytes_up"], mine["bytes_down"]) == (theirs["bytes_up"], theirs["bytes_down"])
        for site, metrics in mine["client_metrics"].items():
            assert theirs["client_metrics"][site]["loss"] == pytest.approx(metrics["loss"], 1e-6)
    pids = {m["pid"] for r in flower["rounds"] for m in r["client_metrics"].values()}
    assert os.getpid() not in pids  # the clients trained in Flower's worker processes


# By default FedSA-LoRA (personalized scoring); FedAvg is matched by the secure aggregation
# test and SCAFFOLD's node state by the deployment test below, so those two cases are slow.
@pytest.mark.parametrize("strategy", [pytest.param("fedavg", marks=pytest.mark.slow),
                                      pytest.param("scaffold", marks=pytest.mark.slow),
                                      "fedsa_lora"])  # fmt: skip
def test_flower_simulation_matches_the_embedded_engine(tiny_foundation, tmp_path, strategy):
    _assert_same(_runs(tmp_path, tiny_foundation, f"federation.strategy.name={strategy}"))


def test_secure_aggregation_through_flower_messages(tiny_foundation, tmp_path):
    """The key protocol as Flower query messages; each node's session (keys, shares) kept in
    its context.state between the protocol's messages."""
    runs = _runs(tmp_path, tiny_foundation, "federation.secure_aggregation.enabled=true",
                 "federation.secure_aggregation.threshold=2")  # fmt: skip
    _assert_same(runs)
    for mine, theirs in zip(runs["embedded"][0]["rounds"], runs["flower"][0]["rounds"]):
        assert theirs["secagg_bytes"] == mine["secagg_bytes"] > 0


def test_a_partition_id_out_of_range_is_refused_naming_it():
    from flwr.app import Context, RecordDict

    from fedumm.config import RunConfig
    from fedumm.engines.flower import _site

    config = RunConfig.model_validate(
        {"federation": {"num_clients": 2, "clients_per_round": 2}}
    ).model_dump_json()
    context = Context(1, 1, {"partition-id": 2, "num-partitions": 3}, RecordDict(), {})
    with pytest.raises(ValueError, match=r"partition-id 2 is out of range: this federation has "
                                         r"2 sites, partition-id 0\.\.1"):  # fmt: skip
        _site(config, context)


def test_flower_without_flwr_is_refused_naming_the_extra(monkeypatch, tiny_foundation, tmp_path):
    from fedumm import extras

    monkeypatch.setattr(extras, "installed", lambda module: module != "flwr")
    result = run_tiny(tmp_path / "run", tiny_foundation, cli=["--engine", "flower"])
    assert result.exit_code == 2
    assert "engine: flower needs Flower" in result.output and "fedumm[flower]" in result.output


def test_export_writes_an_app_that_flwr_run_deploys(tmp_path):
    import tomllib

    result = runner.invoke(
        app,
        [
            "flower",
            "export",
            "configs/quickstart.yaml",
            "-o",
            str(tmp_path / "app"),
            "--results",
            "/srv/fedumm/results",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "partition-id=K num-partitions=8" in result.output
    project = tomllib.loads((tmp_path / "app" / "pyproject.toml").read_text())["tool"]["flwr"]
    assert project["app"]["components"] == {
        "serverapp": "fedumm_app:server_app",
        "clientapp": "fedumm_app:client_app",
    }
    config = json.loads(project["app"]["config"]["fedumm-config"])
    assert config["engine"] == "flower" and config["federation"]["num_clients"] == 8
    assert project["app"]["config"]["out-dir"] == "/srv/fedumm/results"
    result = runner.invoke(app, ["flower", "export", "configs/quickstart.yaml", "--results", "r"])
    assert result.exit_code == 2 and "give an absolute path" in result.output


def test_a_deployment_on_a_superlink_and_two_supernodes(tiny_foundation, tmp_path):
    """flower.env deployment: the exported app started with `flwr run` on a SuperLink and two
    SuperNodes, separate processes (a fresh ClientApp process per message), all stopped after;
    the same adapter as the embedded engine, SCAFFOLD's c_i kept by the SuperNodes."""
    runs, start = {}, time.time()
    for engine, extra in (("embedded", []), ("flower", ["flower.env=deployment"])):
        out = tmp_path / engine
        result = run_tiny(
            out,
            tiny_foundation,
            *TWO_CLIENTS,
            "federation.strategy.name=scaffold",
            "baselines.zero_shot=false",
            *extra,
            cli=["--engine", engine],
        )
        assert result.exit_code == 0, result.output
        runs[engine] = (json.loads((out / "results.json").read_text()),
                        load_file(out / "global_adapter.safetensors"))  # fmt: skip
    _assert_same(runs)
    results = runs["flower"][0]
    pids = [m["pid"] for r in results["rounds"] for m in r["client_metrics"].values()]
    assert len(set(pids)) == len(pids)  # every message its own ClientApp process
    assert (tmp_path / "flower" / "flower" / "logs" / "site-2.log").is_file()
    flower = [p for p in psutil.process_iter(["cmdline", "create_time", "status"])
              if p.info["create_time"] >= start and p.info["status"] != psutil.STATUS_ZOMBIE
              and any(n in " ".join(p.info["cmdline"] or []) for n in
                      ("flower-super", "flwr-serverapp", "flwr-clientapp"))]  # fmt: skip
    assert not flower, [p.info["cmdline"] for p in flower]
