"""Every algorithm through `fedumm run`, and the differences between them that must show."""

import json

import pytest
import torch
from safetensors.torch import load_file

from fedumm.federation.strategies import STRATEGIES
from tests.tiny import assert_trained, client_losses, run_tiny

NO_BASELINES = ["baselines.zero_shot=false", "baselines.local=false", "baselines.centralized=false"]


@pytest.fixture(scope="module")
def run_dirs(tiny_foundation, tmp_path_factory):
    """name -> output folder of a tiny run with that algorithm."""
    out = {}
    extras = {
        "flora": ["lora.client_ranks=[2, 3, 1]"],
        "krum": ["federation.clients_per_round=3", "federation.strategy.num_byzantine=0"],
    }
    for name in STRATEGIES:
        folder = tmp_path_factory.mktemp(name)
        extra = extras.get(name, [])
        result = run_tiny(
            folder, tiny_foundation, f"federation.strategy.name={name}", *NO_BASELINES, *extra
        )
        assert result.exit_code == 0, (name, result.output)
        out[name] = folder
    return out


@pytest.fixture(scope="module")
def runs(run_dirs):
    """name -> results.json of the tiny run with that algorithm."""
    return {name: json.loads((d / "results.json").read_text()) for name, d in run_dirs.items()}


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_each_algorithm_runs_end_to_end(runs, name):
    res = runs[name]
    assert res["config"]["federation"]["strategy"]["name"] == name
    assert 0 <= res["final"]["metrics"]["vqa_accuracy"] <= 100
    assert all(r["bytes_up"] > 0 and not r["rejected"] for r in res["rounds"])
    if name == "dp_fedavg":  # its noise (z = 1) moves the model, and not down the loss
        losses = client_losses(res)
        assert losses[-1] != losses[0]
    else:
        assert_trained(res)


def _per_round(res, direction):
    return sum(r[f"bytes_{direction}"] for r in res["rounds"])


def test_communication_is_counted_per_algorithm(runs):
    base = runs["fedavg"]
    for name in ("ffa_lora", "fedsa_lora"):  # one factor each way
        assert _per_round(runs[name], "up") < 0.75 * _per_round(base, "up"), name
        assert _per_round(runs[name], "down") < 0.75 * _per_round(base, "down"), name
    for name in ("flora", "fedex_lora"):  # a dense folded delta comes down
        assert _per_round(runs[name], "down") > 2 * _per_round(base, "down"), name
    assert _per_round(runs["scaffold"], "up") > 1.9 * _per_round(base, "up")  # + control variate


def test_scaffold_and_fednova_are_not_fedavg_under_skew(tiny_foundation, tmp_path):
    """Dirichlet alpha 0.1, 8 clients, local epochs (so clients take different step counts)."""
    adapters = {}
    for name in ("fedavg", "scaffold", "fednova"):
        result = run_tiny(
            tmp_path / name,
            tiny_foundation,
            f"federation.strategy.name={name}",
            "partition.alpha=0.1",
            "data.train_samples=320",
            "federation.num_clients=8",
            "federation.clients_per_round=8",
            "federation.local_epochs=0.5",
            "federation.rounds=3",
            *NO_BASELINES,
        )
        assert result.exit_code == 0, result.output
        res = json.loads((tmp_path / name / "results.json").read_text())
        steps = {m["steps"] for r in res["rounds"] for m in r["client_metrics"].values()}
        assert len(steps) > 1
        adapters[name] = load_file(tmp_path / name / "global_adapter.safetensors")
    for name in ("scaffold", "fednova"):
        gap = max(
            (adapters[name][k] - adapters["fedavg"][k]).abs().max().item()
            for k in adapters["fedavg"]
        )
        assert gap > 1e-4, name


def test_unused_hyperparameter_and_unknown_algorithm_are_refused(tiny_foundation, tmp_path):
    result = run_tiny(tmp_path, tiny_foundation, "federation.strategy.momentum=0.5")
    assert result.exit_code == 2 and "fedavg has no parameter 'momentum'" in result.output
    result = run_tiny(tmp_path, tiny_foundation, "federation.strategy.name=fedsgd")
    assert result.exit_code == 2 and "unknown strategy 'fedsgd'" in result.output
    assert "known: " + ", ".join(sorted(STRATEGIES)) in " ".join(result.output.split())


def test_client_rank_larger_than_the_layer_is_refused(tiny_foundation, tmp_path):
    result = run_tiny(
        tmp_path, tiny_foundation, "federation.strategy.name=flora", "lora.client_ranks=[2, 500, 2]"
    )
    assert result.exit_code == 1 and "LoRA rank 500 exceeds" in result.output


def test_krum_needs_enough_clients_per_round(tiny_foundation, tmp_path):
    result = run_tiny(tmp_path, tiny_foundation, "federation.strategy.name=krum")
    assert result.exit_code == 2 and "needs more than 4 clients per round; 2 are sampled" in (
        result.output
    )


def test_attack_dropout_and_norm_bound_through_the_cli(tiny_foundation, tmp_path):
    clean = tmp_path / "clean"
    assert run_tiny(clean, tiny_foundation, *NO_BASELINES).exit_code == 0
    attacked = tmp_path / "attacked"
    result = run_tiny(
        attacked,
        tiny_foundation,
        "attack.kind=sign_flip",
        "attack.fraction=0.34",
        "federation.dropout=0.3",
        *NO_BASELINES,
    )
    assert result.exit_code == 0, result.output
    res = json.loads((attacked / "results.json").read_text())
    assert res["attack"]["kind"] == "sign_flip" and len(res["attack"]["clients"]) == 1
    assert all(len(r["dropped"]) == 1 and len(r["client_metrics"]) == 1 for r in res["rounds"])
    a = load_file(clean / "global_adapter.safetensors")
    b = load_file(attacked / "global_adapter.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a)
    bounded = tmp_path / "bounded"
    result = run_tiny(
        bounded,
        tiny_foundation,
        "attack.kind=scale",
        "attack.magnitude=1000",
        "attack.fraction=0.34",
        "federation.max_update_norm=1.0",
        "federation.clients_per_round=3",
        *NO_BASELINES,
    )
    assert result.exit_code == 0, result.output
    res = json.loads((bounded / "results.json").read_text())
    evil = res["attack"]["clients"][0]
    rejected = [x["client_id"] for r in res["rounds"] for x in r["rejected"]]
    assert rejected == [evil, evil]  # the scaled update is refused every round, nobody else
    # One slow device (4x slower): 8 nominal steps of work against a deadline of 3.
    slow = tmp_path / "slow"
    result = run_tiny(
        slow,
        tiny_foundation,
        "federation.stragglers=0.34",
        "federation.round_deadline=3",
        "federation.clients_per_round=3",
        *NO_BASELINES,
    )
    assert result.exit_code == 0, result.output
    rounds = json.loads((slow / "results.json").read_text())["rounds"]
    late = [r["late"] for r in rounds]
    assert late[0] == late[1] and len(late[0]) == 1
    assert all(
        late[0][0] not in r["client_metrics"] and len(r["client_metrics"]) == 2 for r in rounds
    )


def test_dp_and_secure_aggregation(runs, run_dirs, tiny_foundation, tmp_path):
    """DP-FedAvg reports its privacy loss; secure aggregation leaves FedAvg's result as it is."""
    privacy = runs["dp_fedavg"]["privacy"]
    assert privacy["epsilon"] > 0 and privacy["rounds"] == 2
    # the quick start draws its clients cyclically: predictable, so no amplification
    assert privacy["sample_rate"] == 1.0 and privacy["sampling"].startswith("cyclic")
    result = run_tiny(
        tmp_path, tiny_foundation, "federation.secure_aggregation=true", *NO_BASELINES
    )
    assert result.exit_code == 0, result.output
    secure = load_file(tmp_path / "global_adapter.safetensors")
    plain = load_file(run_dirs["fedavg"] / "global_adapter.safetensors")
    assert all(torch.allclose(secure[k], plain[k], atol=1e-5) for k in plain)


def test_robust_rules_resist_sign_flipping_where_fedavg_does_not(tiny_foundation, tmp_path):
    """One of 5 clients (20%) sends -4x its update. Deviation = ||attacked - clean|| over
    ||clean - initial|| of the final adapter: FedAvg is pushed further than it learned; median,
    trimmed mean and Multi-Krum stay near their clean result (accuracy at scale:
    docs/results/robustness.md)."""
    from fedumm.models import BUILTIN_TARGETS, foundation
    from fedumm.models.lora import add_lora, initial_adapters

    base, _ = foundation.load(tiny_foundation)
    initial = initial_adapters(add_lora(base, 2, 8.0, 0.0, BUILTIN_TARGETS, 0))[2]

    def distance(a, b):
        return float(torch.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in a)))

    common = [
        "federation.num_clients=5",
        "federation.clients_per_round=5",
        "partition.alpha=1.0",
        "data.train_samples=200",
        "attack.fraction=0.2",
        *NO_BASELINES,
    ]
    deviation = {}
    for rule, extra in [
        ("fedavg", []),
        ("median", []),
        ("trimmed_mean", []),
        ("krum", ["federation.strategy.num_byzantine=1", "federation.strategy.multi_krum=3"]),
    ]:
        final = {}
        for kind in ("none", "sign_flip"):
            out = tmp_path / f"{rule}-{kind}"
            result = run_tiny(
                out,
                tiny_foundation,
                f"federation.strategy.name={rule}",
                f"attack.kind={kind}",
                *common,
                *extra,
            )
            assert result.exit_code == 0, result.output
            final[kind] = load_file(out / "global_adapter.safetensors")
        deviation[rule] = distance(final["none"], final["sign_flip"]) / distance(
            final["none"], initial
        )
    assert deviation["fedavg"] > 1.0, deviation
    assert all(deviation[r] < 0.75 for r in ("median", "trimmed_mean", "krum")), deviation
