"""A client trained by two processes (runtime.client_devices: 2, gloo on the CPU) takes the steps
one process takes on the same global batch; a rank that dies fails the client, not the run."""

from __future__ import annotations

import json
import time

import pytest
import torch

from fedumm.cli import app
from fedumm.config import ConfigError, load_config
from fedumm.distributed import ClientFailed, RankGroup, rank_devices
from fedumm.parts import build_parts
from tests.tiny import TINY_RUN, assert_trained, run_tiny, runner

# SGD: the summed gradient differs from one process's by float summation order only, and SGD
# passes that on unamplified. AdamW divides each gradient by its own running size, so where a
# gradient is near zero rounding becomes a step of up to lr: compared at a tolerance of lr.
EXACT = 1e-6


def parts_of(foundation, *overrides):
    items = [*TINY_RUN, f"model.foundation={foundation}", *overrides]
    return build_parts(load_config("configs/quickstart.yaml", items))


def largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_a_batch_is_shared_in_contiguous_parts_rank_0_first():
    shares = [RankGroup(r, 3, False).share(list(range(7))) for r in range(3)]
    assert shares == [[0, 1, 2], [3, 4], [5, 6]]
    assert [RankGroup(r, 2, False).share([9]) for r in range(2)] == [[9], []]
    assert RankGroup(0, 2, True).most_pieces(list(range(5)), lambda s: len(s)) == 3


@pytest.mark.parametrize(
    ("strategy", "sharding", "optimizer"),
    [
        ("fedavg", "ddp", "sgd"),
        ("scaffold", "ddp", "sgd"),
        ("fedsa_lora", "ddp", "adamw"),
        ("fedavg", "fsdp", "sgd"),
    ],
)
def test_two_processes_train_a_client_as_one_does(tiny_foundation, strategy, sharding, optimizer):
    common = [
        f"federation.strategy.name={strategy}",
        f"federation.optimizer={optimizer}",
        "federation.batch_size=5",  # uneven shares: 3 and 2 samples
        "runtime.micro_batch_size=2",  # and uneven micro-batches: 2 and 1 (fsdp pads)
    ]
    if sharding == "fsdp":
        common.append("engine=flare")  # fsdp shards a site's base; the server holds the whole
    one = parts_of(tiny_foundation, *common)
    two = parts_of(
        tiny_foundation,
        *common,
        "runtime.client_devices=2",
        f"runtime.client_sharding={sharding}",
    )
    try:
        for rnd in (1, 2):  # the second round from the state the first left (SCAFFOLD's c_i)
            a = one.train_client(one.client("site-2"), one.strategy.broadcast(one.initial), rnd)
            b = two.train_client(two.client("site-2"), two.strategy.broadcast(two.initial), rnd)
            tolerance = EXACT if optimizer == "sgd" else one.cfg.federation.lr
            assert largest_difference(a.params, b.params) < tolerance
            assert a.metrics["loss"] == pytest.approx(b.metrics["loss"], rel=1e-6)
            assert (a.num_samples, a.num_steps) == (b.num_samples, b.num_steps)
            state_one, state_two = one.client_states["site-2"], two.client_states["site-2"]
            if state_one:
                assert largest_difference(state_one, state_two) < EXACT
        assert two.processes.peers is not None and len(two.processes.peers.processes) == 1
        shared = a.params.keys() & one.initial.keys()  # SCAFFOLD's upload adds Delta c_i
        trained = {k: a.params[k] for k in shared}
        start = {k: one.initial[k] for k in shared}
        assert largest_difference(trained, start) > 100 * EXACT  # trained adapters compared
    finally:
        two.close()


def test_a_rank_that_dies_mid_round_fails_the_client_and_the_next_round_starts_anew(
    tiny_foundation, monkeypatch
):
    parts = parts_of(tiny_foundation, "runtime.client_devices=2")
    client = parts.client("site-1")
    try:
        parts.train_client(client, parts.initial, 1)  # starts the peer
        peer = parts.processes.peers.processes[0]
        summed, steps = RankGroup.sum_gradients, []

        def kill_at_the_second_step(group, params, loss):  # rank 0 then waits on a dead rank 1
            steps.append(1)
            if len(steps) == 2:
                peer.kill()
                peer.join()
            return summed(group, params, loss)

        monkeypatch.setattr(RankGroup, "sum_gradients", kill_at_the_second_step)
        start = time.monotonic()
        with pytest.raises(ClientFailed, match="rank 1 exited with code -9"):
            parts.train_client(client, parts.initial, 2)
        assert time.monotonic() - start < 30  # no hang
        assert parts.processes.peers is None and len(steps) == 2
        again = parts.train_client(client, parts.initial, 2)  # with a new peer
        assert parts.processes.peers.processes[0].pid != peer.pid
        assert again.num_steps == parts.cfg.federation.local_steps
    finally:
        parts.close()


def test_a_federation_with_two_processes_per_client_runs_end_to_end(tiny_foundation, tmp_path):
    result = run_tiny(tmp_path, tiny_foundation, "runtime.client_devices=2")
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "results.json").read_text())
    assert_trained(results)
    assert results["config"]["runtime"]["client_devices"] == 2
    assert all(m["processes"] == 2 for r in results["rounds"] for m in r["client_metrics"].values())


@pytest.mark.parametrize(
    ("overrides", "key", "why"),
    [
        (["runtime.client_devices=2", "federation.dp_sgd.enabled=true"], "dp_sgd", "one"),
        (["runtime.client_devices=2", "runtime.devices=[cpu, cpu]"], "runtime.devices", "choose"),
        (["runtime.client_sharding=fsdp"], "fsdp", "there is one"),
        (["runtime.client_devices=2", "runtime.client_sharding=fsdp"], "embedded", "use ddp"),
        (
            [
                "runtime.client_devices=2",
                "runtime.client_sharding=fsdp",
                "engine=flare",
                "lora=null",
            ],
            "lora: null",
            "use ddp",
        ),
        (
            [
                "runtime.client_devices=2",
                "runtime.client_sharding=fsdp",
                "engine=flare",
                "federation.strategy.name=flora",
            ],
            "runtime.client_sharding",
            "flora writes its aggregate into the frozen base",
        ),
        (["runtime.client_devices=64"], "runtime.client_devices", "CPU core"),
        (["runtime.client_devices=[cpu, cuda:0]", "runtime.device=cpu"], "cuda:0", "no CUDA"),
    ],
)
def test_what_several_processes_cannot_do_is_refused_before_any_work(tmp_path, overrides, key, why):
    args = ["run", "configs/quickstart.yaml", "-o", str(tmp_path), "--quiet"]
    for item in overrides:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert key in result.output and why in result.output
    assert not (tmp_path / "results.json").exists()


def test_a_count_of_gpus_beyond_the_machines_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cfg = load_config(None, ["runtime.client_devices=3", "runtime.device=cuda:0"])
    with pytest.raises(ConfigError, match="3 processes, one GPU each from cuda:0.*has 2 GPU"):
        rank_devices(cfg.runtime)
    cfg = load_config(
        None, ["runtime.client_devices=[cuda:0, cuda:0, cuda:1]", "runtime.device=cuda:0"]
    )
    assert rank_devices(cfg.runtime) == [torch.device("cuda", i) for i in (0, 0, 1)]
    cfg = load_config(None, ["runtime.client_devices=[cuda:0, cuda:1]", "runtime.device=cuda:1"])
    with pytest.raises(ConfigError, match=r"runtime.device \(cuda:1\), so the list starts"):
        rank_devices(cfg.runtime)


@pytest.mark.slow  # 31 s in make test; rank deaths and resume by default: the tests above
def test_a_killed_client_leaves_no_process_and_its_run_resumes_to_the_same_result(
    tiny_foundation, tmp_path
):
    """SIGKILL to rank 0 (the run itself): its peer and their fork server exit on their own;
    `--resume` continues from the checkpoint to the uninterrupted run's results."""
    import os
    import signal
    import subprocess
    import sys

    import psutil

    from tests.federation.test_resume import _without_timings
    from tests.tiny import wait_for_checkpoint

    longer = ["runtime.client_devices=2", "federation.rounds=4", "baselines.local=false"]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert run_tiny(clean, tiny_foundation, *longer).exit_code == 0
    args = [sys.executable, "-m", "fedumm.cli", "run", "configs/quickstart.yaml"]
    args += ["-o", str(killed), "--quiet"]
    for item in [*TINY_RUN, f"model.foundation={tiny_foundation}", *longer]:
        args += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_for_checkpoint(proc, killed, 2)
    family = psutil.Process(proc.pid).children(recursive=True)
    assert proc.poll() is None and family, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, alive = psutil.wait_procs(family, timeout=20)
    assert not alive, [p.cmdline() for p in alive]
    result = runner.invoke(app, ["run", "--resume", str(killed), "--quiet"])
    assert result.exit_code == 0, result.output
    a = json.loads((clean / "results.json").read_text())
    b = json.loads((killed / "results.json").read_text())
    assert _without_timings(a) == _without_timings(b)
