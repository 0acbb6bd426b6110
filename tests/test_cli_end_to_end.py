"""`fedumm run` / `fedumm pretrain` as a user calls them, at tiny scale, every feature on."""

import json

import pytest

from fedumm.cli import app
from tests.tiny import TINY_RUN, runner
from tests.tiny import run_tiny as _run


@pytest.fixture(scope="module")
def tiny_run(tiny_foundation, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = _run(out, tiny_foundation)
    assert result.exit_code == 0, result.output
    return out, result


def test_run_writes_the_promised_results(tiny_run):
    out, result = tiny_run
    res = json.loads((out / "results.json").read_text())
    assert [r["round"] for r in res["rounds"]] == [1, 2]
    for r in res["rounds"]:
        assert {"round", "metrics", "bytes_up", "bytes_down", "seconds"} <= r.keys()
        assert r["bytes_up"] > 0 and r["bytes_down"] > 0 and len(r["clients"]) == 2
    assert 0 <= res["final"]["metrics"]["vqa_accuracy"] <= 100
    assert set(res["baselines"]) == {"zero_shot", "local", "centralized"}
    assert len(res["baselines"]["local"]["clients"]) == 3
    comm = res["communication"]
    assert comm["full_finetune_bytes_per_round"] > comm["adapter_bytes_per_round"] > 0
    assert comm["ratio"] == pytest.approx(
        comm["full_finetune_bytes_per_round"] / comm["adapter_bytes_per_round"]
    )
    assert res["config"]["federation"]["num_clients"] == 3
    assert sum(c["samples"] for c in res["partition"]["clients"]) == 96
    for name in ("report.md", "accuracy.png", "communication.png", "global_adapter.safetensors"):
        assert (out / name).stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "Adapter-only federation sends" in report
    assert "(2 per round, cyclic, equal weights)" in report  # the quick start's sampling, weights
    cpu = res["runtime"]  # the machine: its numbers are bit for bit on that machine only
    assert cpu["device_name"] and cpu["threads"] >= 1
    assert f" on {cpu['device_name']}, {cpu['threads']} threads, fp32" in report
    assert "federated LoRA (fedavg)" in result.output


def test_same_config_and_seed_give_identical_numbers(tiny_run, tiny_foundation, tmp_path):
    out, _ = tiny_run
    assert _run(tmp_path, tiny_foundation).exit_code == 0
    a = json.loads((out / "results.json").read_text())
    b = json.loads((tmp_path / "results.json").read_text())
    for key in ("final", "baselines", "communication", "partition"):
        assert a[key] == b[key], key
    assert [r["metrics"] for r in a["rounds"]] == [r["metrics"] for r in b["rounds"]]
    assert (out / "global_adapter.safetensors").read_bytes() == (
        tmp_path / "global_adapter.safetensors"
    ).read_bytes()


def test_another_seed_gives_other_numbers(tiny_run, tiny_foundation, tmp_path):
    out, _ = tiny_run
    assert _run(tmp_path, tiny_foundation, "seed=1", "baselines.local=false").exit_code == 0
    a = (out / "global_adapter.safetensors").read_bytes()
    assert a != (tmp_path / "global_adapter.safetensors").read_bytes()


def test_iid_partition_and_no_baselines(tiny_foundation, tmp_path):
    result = _run(
        tmp_path,
        tiny_foundation,
        "partition.scheme=iid",
        "baselines.zero_shot=false",
        "baselines.local=false",
        "baselines.centralized=false",
    )
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["baselines"] == {}
    assert sorted(c["samples"] for c in res["partition"]["clients"]) == [32, 32, 32]


def test_bad_config_is_refused_before_any_work(tmp_path):
    result = runner.invoke(
        app,
        [
            "run",
            "configs/quickstart.yaml",
            "-o",
            str(tmp_path / "x"),
            "--set",
            "partition.alpha=-1",
        ],
    )
    assert result.exit_code == 2
    assert "partition.alpha: Input should be greater than 0" in result.output
    assert not (tmp_path / "x").exists()


def test_an_unknown_foundation_is_refused_with_the_names_that_exist(tmp_path):
    result = runner.invoke(
        app,
        [
            "run",
            "configs/quickstart.yaml",
            "-o",
            str(tmp_path / "x"),
            "--set",
            "model.foundation=asistant",
        ],
    )
    assert result.exit_code == 2
    assert (
        "model.foundation: 'asistant' is neither a shipped foundation (builtin, assistant, "
        "assistant-v2, captioner; builtin = assistant-v2)" in result.output
    )
    assert not (tmp_path / "x").exists()


def test_lora_target_that_matches_nothing_names_the_modules(tiny_foundation, tmp_path):
    result = _run(tmp_path, tiny_foundation, "lora.target_modules=[qkv]")
    assert result.exit_code == 1
    assert "match no module" in result.output and "q_proj" in result.output


def test_pretrain_command_writes_a_loadable_foundation(tmp_path):
    from tests.conftest import TINY_PRETRAIN

    args = ["pretrain", "-o", str(tmp_path)]
    for k, v in TINY_PRETRAIN.items():
        args += ["--set", f"{k}={v}"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "pretraining.json").read_text())
    assert {"caption_exact_match", "caption_to_image_loss"} <= card["metrics"].keys()
    assert card["runtime"]["device"] == "cpu" and card["runtime"]["device_name"]  # the CPU model
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "tokenizer.json").is_file()


def test_help_and_strategy_list():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "run" in result.output and "pretrain" in result.output
    result = runner.invoke(app, ["strategies"])
    assert "fedavg" in result.output and "McMahan" in result.output
    # what federation.compression compresses of each algorithm's messages
    assert "Delta c_i exactly, fp32" in result.output  # SCAFFOLD's control variates
    from fedumm.federation.strategies import STRATEGIES

    assert result.output.count("compressed:") == len(STRATEGIES)


def test_local_epochs_give_unequal_steps_and_fraction_samples(tiny_foundation, tmp_path):
    result = _run(
        tmp_path,
        tiny_foundation,
        "federation.local_epochs=0.5",
        "federation.sample_fraction=0.34",
        "baselines.local=false",
        "baselines.zero_shot=false",
    )
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "results.json").read_text())
    sizes = {c["client_id"]: c["samples"] for c in res["partition"]["clients"]}
    for r in res["rounds"]:
        assert len(r["clients"]) == 1  # round(0.34 * 3) = 1
        for cid, m in r["client_metrics"].items():
            assert m["steps"] == -(-sizes[cid] // 16)  # ceil(0.5 * n / batch 8)
    assert "0.5 local epochs" in (tmp_path / "report.md").read_text()


def test_config_command_prints_a_valid_annotated_config(tmp_path):
    from fedumm.config import RunConfig, load_config

    result = runner.invoke(app, ["config"])
    assert result.exit_code == 0 and "# LoRA rank." in result.output
    (tmp_path / "c.yaml").write_text(result.output)
    assert load_config(tmp_path / "c.yaml") == RunConfig()
    assert "steps: 2500  # Optimizer steps." in runner.invoke(app, ["config", "--pretrain"]).output


def test_cosine_lr_decay_lowers_the_client_lr_in_later_rounds(tiny_foundation, tmp_path):
    rounds = {}
    for decay in ("none", "cosine"):
        result = _run(
            tmp_path / decay,
            tiny_foundation,
            f"federation.lr_decay={decay}",
            "baselines.zero_shot=false",
            "baselines.local=false",
            "baselines.centralized=false",
        )
        assert result.exit_code == 0, result.output
        rounds[decay] = json.loads((tmp_path / decay / "results.json").read_text())["rounds"]
    # Round 1 of 2 trains at the full rate under both; round 2 at half the rate under cosine.
    assert (
        rounds["none"][0]["client_metrics"].keys() == rounds["cosine"][0]["client_metrics"].keys()
    )
    for cid, m in rounds["none"][0]["client_metrics"].items():
        assert m["loss"] == rounds["cosine"][0]["client_metrics"][cid]["loss"]
    for cid, m in rounds["none"][1]["client_metrics"].items():
        assert m["loss"] != rounds["cosine"][1]["client_metrics"][cid]["loss"]


def test_baselines_train_at_their_own_lr(tiny_foundation, tmp_path, monkeypatch):
    """baselines.lr sets the local-only and centralized runs' rate; the federation keeps its own."""
    import fedumm.parts as parts  # the federated clients train there
    import fedumm.recipe as recipe  # the baselines there

    rates = {"federated": set(), "baselines": set()}
    train = recipe.local_update

    def recording(learner, client, message, schedule, *args, **kwargs):
        lr = schedule.lr
        rates["baselines" if callable(lr) else "federated"].add(lr(0) if callable(lr) else lr)
        return train(learner, client, message, schedule, *args, **kwargs)

    monkeypatch.setattr(parts, "local_update", recording)
    monkeypatch.setattr(recipe, "local_update", recording)
    result = _run(
        tmp_path / "lr",
        tiny_foundation,
        "federation.lr=0.003",
        "baselines.lr=0.02",
        "baselines.zero_shot=false",
    )
    assert result.exit_code == 0, result.output
    assert rates == {"federated": {0.003}, "baselines": {0.02}}
    assert "at lr 0.003 (the baselines at 0.02)" in (tmp_path / "lr" / "report.md").read_text()


def test_partition_command_writes_the_partition_a_run_uses(tiny_run, tiny_foundation, tmp_path):
    run_dir, _ = tiny_run
    args = ["partition", "configs/quickstart.yaml", "-o", str(tmp_path)]
    for item in [*TINY_RUN, f"model.foundation={tiny_foundation}"]:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "partition.json").read_text())
    run = json.loads((run_dir / "results.json").read_text())["partition"]
    assert summary == run
    assert (tmp_path / "partition_vqa.png").stat().st_size > 0
    assert "dirichlet (alpha=0.5)" in result.output


@pytest.mark.parametrize("scheme", ["quantity", "shards"])
def test_size_and_shard_skew_run_end_to_end(tiny_foundation, tmp_path, scheme):
    result = _run(
        tmp_path,
        tiny_foundation,
        f"partition.scheme={scheme}",
        "partition.quantity_law=power",
        "baselines.local=false",
    )
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "results.json").read_text())
    sizes = [c["samples"] for c in res["partition"]["clients"]]
    assert sum(sizes) == 96
    if scheme == "quantity":  # power law 1.5 over 3 clients: shares 1 : 0.35 : 0.19
        assert max(sizes) > 2 * min(sizes)
    assert res["partition"]["description"].startswith(scheme.replace("quantity", "quantity skew"))


def test_federated_full_fine_tuning_sends_every_weight(tiny_run, tiny_foundation, tmp_path):
    result = _run(tmp_path, tiny_foundation, "lora=null", "baselines.local=false")
    assert result.exit_code == 0, result.output
    assert "federated full fine-tuning (fedavg)" in result.output
    res = json.loads((tmp_path / "results.json").read_text())
    c = res["communication"]
    assert c["trainable_parameters"] == c["total_parameters"] and c["ratio"] == 1.0
    for r in res["rounds"]:  # measured: one full model per sampled client, each way
        assert r["bytes_up"] == r["bytes_down"] == len(r["clients"]) * c["full_model_message_bytes"]
    lora = json.loads((tiny_run[0] / "results.json").read_text())["communication"]
    assert c["adapter_bytes_per_round"] > 5 * lora["adapter_bytes_per_round"]
    from safetensors.torch import load_file

    from fedumm.models import foundation

    sent = load_file(tmp_path / "global_adapter.safetensors")
    base, _ = foundation.load(tiny_foundation)
    assert sent.keys() == dict(base.named_parameters()).keys()
    assert "full fine-tuning" in (tmp_path / "report.md").read_text()


def test_lora_strategies_refuse_full_fine_tuning(tiny_foundation, tmp_path):
    result = _run(tmp_path, tiny_foundation, "lora=null", "federation.strategy.name=flora")
    assert result.exit_code == 2
    assert "flora aggregates LoRA factors; with lora: null" in result.output


@pytest.mark.parametrize(("engine", "what"), [("flare", "job"), ("flower", "app")])
def test_an_export_refuses_noise_anyone_can_regenerate(tmp_path, engine, what):
    result = runner.invoke(
        app,
        [
            engine,
            "export",
            "configs/quickstart.yaml",
            "-o",
            str(tmp_path),
            "--set",
            "federation.seeded_privacy_noise=true",
        ],
    )
    assert result.exit_code == 2
    assert f"an exported {what} is a deployment" in result.output
    assert not any(tmp_path.iterdir())
