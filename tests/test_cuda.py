"""On a CUDA GPU: the same federation as on the CPU, the memory savers, device workers, FLARE
sites on a GPU, and running out of memory. Skipped without a GPU (CI has none); run them with
`benchmarks/gpu_check.sh` on a GPU machine."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.tiny import run_tiny

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
SMALL = [
    "federation.num_clients=3",
    "federation.clients_per_round=3",
    "threads=1",
    "baselines.local=false",
]


def _run(out, foundation, *overrides, cli=()):
    result = run_tiny(out, foundation, *SMALL, *overrides, cli=cli)
    assert result.exit_code == 0, result.output
    return json.loads((out / "results.json").read_text()), load_file(
        out / "global_adapter.safetensors"
    )


def _largest_gap(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_a_gpu_federation_matches_the_cpu_one(tiny_foundation, tmp_path):
    cpu, a = _run(tmp_path / "cpu", tiny_foundation, "runtime.device=cpu")
    gpu, b = _run(tmp_path / "gpu", tiny_foundation, "runtime.device=cuda")
    assert gpu["runtime"]["device"] == "cuda:0" and "device_name" in gpu["runtime"]
    assert _largest_gap(a, b) < 1e-3
    for mine, theirs in zip(cpu["rounds"], gpu["rounds"]):
        for site, m in mine["client_metrics"].items():
            assert theirs["client_metrics"][site]["loss"] == pytest.approx(m["loss"], rel=1e-3)
    # evaluation, generation and the centralized baseline ran on the GPU too
    assert gpu["baselines"]["centralized"]["metrics"]["vqa_accuracy"] >= 0


def test_generation_is_the_same_images_on_the_gpu(tiny_foundation, tmp_path):
    """Image codes are sampled from the same seeded CPU generator wherever the model runs."""
    unified = ["data.tasks=[vqa, generation]", "baselines.centralized=false"]
    cpu, _ = _run(tmp_path / "cpu", tiny_foundation, *unified, "runtime.device=cpu")
    gpu, _ = _run(tmp_path / "gpu", tiny_foundation, *unified, "runtime.device=cuda")
    zero = [r["baselines"]["zero_shot"]["metrics"]["geneval_per_tag"] for r in (cpu, gpu)]
    assert zero[0] == zero[1]


@pytest.mark.parametrize(
    "savers",
    [
        ["runtime.precision=bf16", "model.dtype=bfloat16"],
        ["runtime.precision=fp16"],
        ["runtime.gradient_checkpointing=true", "runtime.micro_batch_size=3"],
    ],
)
def test_memory_savers_train_on_the_gpu(tiny_foundation, tmp_path, savers):
    plain, a = _run(tmp_path / "plain", tiny_foundation, "runtime.device=cuda")
    saved, b = _run(tmp_path / "saved", tiny_foundation, "runtime.device=cuda", *savers)
    assert all(v.dtype == torch.float32 for v in b.values())  # adapters stay fp32
    losses = [m["loss"] for r in saved["rounds"] for m in r["client_metrics"].values()]
    assert all(torch.isfinite(torch.tensor(losses)))
    tolerance = 1e-4 if "runtime.gradient_checkpointing=true" in savers else 5e-2
    assert _largest_gap(a, b) < tolerance


def test_two_workers_on_one_gpu_give_the_one_worker_federation(tiny_foundation, tmp_path):
    one, a = _run(
        tmp_path / "one",
        tiny_foundation,
        "runtime.device=cuda:0",
        "federation.strategy.name=scaffold",
    )
    two, b = _run(
        tmp_path / "two",
        tiny_foundation,
        "runtime.devices=[cuda:0, cuda:0]",
        "federation.strategy.name=scaffold",
    )
    assert two["runtime"]["devices"] == ["cuda:0", "cuda:0"]
    assert _largest_gap(a, b) < 1e-5
    assert one["final"]["metrics"]["vqa_accuracy"] == two["final"]["metrics"]["vqa_accuracy"]


def test_flare_sites_train_on_the_devices_they_are_given(tiny_foundation, tmp_path):
    pytest.importorskip("nvflare")
    results, _ = _run(
        tmp_path / "flare",
        tiny_foundation,
        "federation.num_clients=2",
        "federation.clients_per_round=2",
        "baselines.centralized=false",
        "flare.site_devices={site-1: 'cuda:0', site-2: cpu}",
        cli=["--engine", "flare"],
    )
    devices = {
        site: m["device"] for r in results["rounds"] for site, m in r["client_metrics"].items()
    }
    assert devices == {"site-1": "cuda:0", "site-2": "cpu"}


def test_running_out_of_gpu_memory_names_the_savers(tiny_foundation, tmp_path):
    """A batch larger than this process may hold (capped at 200 MB): the run stops with what to
    change, not a traceback."""
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(200e6 / total, 0)
    try:
        result = run_tiny(
            tmp_path / "oom",
            tiny_foundation,
            *SMALL,
            "runtime.device=cuda",
            "data.train_samples=6000",
            "federation.batch_size=6000",
            "partition.scheme=iid",
        )
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        torch.cuda.empty_cache()
    assert result.exit_code == 1, result.output
    text = result.output.replace("\n", "")
    assert "out of memory" in text and "runtime.micro_batch_size" in text
    assert "runtime.gradient_checkpointing=true" in text


@pytest.mark.parametrize(
    "ranks",
    [
        pytest.param("[cuda:0, cuda:0]", id="one-gpu-split-gloo"),
        pytest.param(
            "2",
            id="two-gpus-nccl",
            marks=pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs"),
        ),
    ],
)
@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_two_processes_train_a_gpu_client_as_one_does(tiny_foundation, ranks, sharding):
    """runtime.client_devices on GPUs: the client's adapter after a round as one process
    trains it (SGD: float summation order only); fsdp's base sharded over the processes."""
    from fedumm.config import load_config
    from fedumm.parts import build_parts
    from tests.tiny import TINY_RUN

    common = [
        *TINY_RUN,
        f"model.foundation={tiny_foundation}",
        "runtime.device=cuda:0",
        "federation.optimizer=sgd",
        "federation.batch_size=5",
        "engine=flare",
    ]
    one = build_parts(load_config("configs/quickstart.yaml", common))
    two = build_parts(
        load_config(
            "configs/quickstart.yaml",
            [*common, f"runtime.client_devices={ranks}", f"runtime.client_sharding={sharding}"],
        )
    )
    try:
        a = one.train_client(one.client("site-1"), one.initial, 1)
        b = two.train_client(two.client("site-1"), two.initial, 1)
        assert _largest_gap(a.params, b.params) < 1e-5
        assert b.metrics["processes"] == 2
    finally:
        two.close()
