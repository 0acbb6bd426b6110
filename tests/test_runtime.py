"""The `runtime` section: devices refused before any work, and memory savers that train the same
model (micro-batching, gradient checkpointing) or the same model in lower precision (bf16)."""

import json
import threading

import pytest
import torch

from fedumm.config import ConfigError, FederationConfig, RuntimeConfig, load_config
from fedumm.federation.client import ClientData, local_schedule, local_update
from fedumm.models import place
from fedumm.models.lora import add_lora, get_adapter
from fedumm.runtime import MEMORY_ADVICE, Runtime, prefetched, resolve
from fedumm.training import Learner, Schedule, train_steps
from tests.tiny import run_tiny

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")


@NO_GPU
@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["runtime.device=cuda"],
            "runtime.device: 'cuda' asked for, but this machine has no CUDA device",
        ),
        (["runtime.device=cuda:3"], "available: cpu"),
        (["runtime.devices=[cpu, cuda:1]"], "runtime.devices: 'cuda:1' asked for"),
        (
            ["runtime.devices=all"],
            "runtime.devices: 'all' GPUs asked for, but this machine has none",
        ),
        (["runtime.precision=fp16"], "runtime.precision: fp16 needs a CUDA device"),
    ],
)
def test_devices_this_machine_lacks_are_refused_before_any_work(
    tiny_foundation, tmp_path, overrides, message
):
    out = tmp_path / "run"
    result = run_tiny(out, tiny_foundation, *overrides)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists()  # nothing was built or written


def test_a_device_beyond_the_count_names_what_exists():
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ConfigError, match=f"runtime.device: 'cuda:{count}' asked for"):
        resolve(RuntimeConfig(device=f"cuda:{count}"))


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "runtime.device=gpu",
            "runtime.device: Value error, unknown device 'gpu'; expected auto, cpu, cuda or cuda:N",
        ),
        ("runtime.devices=[]", "runtime.devices"),
        ("runtime.precision=int8", "runtime.precision: Input should be 'fp32', 'bf16' or 'fp16'"),
        ("runtime.micro_batch_size=0", "runtime.micro_batch_size: Input should be greater than"),
    ],
)
def test_bad_runtime_keys_are_named(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, [override])


def test_dp_sgd_refuses_micro_batches():
    with pytest.raises(ConfigError, match="runtime.micro_batch_size .4. with federation.dp_sgd"):
        load_config(None, ["federation.dp_sgd.enabled=true", "runtime.micro_batch_size=4"])


def test_auto_is_the_cpu_without_a_gpu_and_the_first_gpu_with_one():
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert str(resolve(RuntimeConfig()).device) == expected
    assert resolve(RuntimeConfig(device="cpu")).device == torch.device("cpu")


def _train(model, data, collate, runtime, steps=3):
    stats = train_steps(Learner(model, collate, runtime=runtime), data, Schedule(steps, 8, 1e-2, 5))
    return get_adapter(model), stats.loss


@pytest.fixture
def lora_model(tiny_foundation):
    """The tiny foundation with LoRA, and a small VQA training set for it."""
    from fedumm.data import shapesworld as sw
    from fedumm.models import foundation
    from fedumm.models.processor import encode_vqa

    base, processor = foundation.load(tiny_foundation)
    model = add_lora(base, 2, 4.0, 0.0, ["q_proj", "v_proj", "lm_head"], seed=0)
    samples = sw.vqa_dataset(40, "train", 0, ("color", "count"))
    data = encode_vqa(
        processor,
        __import__("numpy").stack([s.image for s in samples]),
        [s.question for s in samples],
        [s.answer for s in samples],
    )
    return model, data, processor.collate


def test_micro_batches_and_checkpointing_train_the_same_adapter(lora_model):
    model, data, collate = lora_model
    start = get_adapter(model)
    reference, loss = _train(model, data, collate, Runtime())
    for runtime in (Runtime(micro_batch_size=3), Runtime(gradient_checkpointing=True)):
        from fedumm.models.lora import set_adapter

        set_adapter(model, start)
        place(model.get_base_model(), runtime)
        adapter, again = _train(model, data, collate, runtime)
        assert again == pytest.approx(loss, rel=1e-5)
        assert max(float((adapter[k] - reference[k]).abs().max()) for k in adapter) < 1e-5
        assert max(float((adapter[k] - start[k]).abs().max()) for k in adapter) > 1e-4  # trained
        model.get_base_model().activation_checkpointing_disable()


def test_bf16_trains_fp32_adapters_on_a_bf16_base(lora_model):
    model, data, collate = lora_model
    model.get_base_model().to(torch.bfloat16)
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data = p.data.float()  # peft keeps adapters in fp32 over a low-precision base
    seen = {}
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        seen["states"] = {v.dtype for s in self.state.values() for v in s.values() if v.dim()}
        return out

    torch.optim.AdamW.step = step
    try:
        learner = Learner(model, collate, runtime=Runtime(precision="bf16"))
        first = train_steps(learner, data, Schedule(1, 8, 1e-2, 5))
        later = train_steps(learner, data, Schedule(30, 8, 1e-2, 6))
    finally:
        torch.optim.AdamW.step = original
    assert later.loss < first.loss
    assert {p.dtype for n, p in model.named_parameters() if "lora_" in n} == {torch.float32}
    assert seen["states"] == {torch.float32}
    assert {p.dtype for n, p in model.named_parameters() if "lora_" not in n} == {torch.bfloat16}


def test_a_client_update_leaves_the_device_on_the_cpu(lora_model):
    model, data, collate = lora_model
    message = get_adapter(model)
    update = local_update(
        Learner(model, collate),
        ClientData("site-1", data),
        message,
        local_schedule(FederationConfig(batch_size=8), 2, 1),
    )
    assert {v.device.type for v in update.params.values()} == {"cpu"}


def test_prefetching_keeps_order_and_raises_what_the_builder_raised():
    assert list(prefetched(range(20), lambda i: i * i)) == [i * i for i in range(20)]

    def fails(i):
        if i == 3:
            raise ValueError("bad item 3")
        return i

    with pytest.raises(ValueError, match="bad item 3"):
        list(prefetched(range(10), fails))
    before = threading.active_count()
    stream = prefetched(range(1000), lambda i: i)
    assert next(stream) == 0
    stream.close()  # a consumer that stops early leaves no thread behind
    assert threading.active_count() == before


def test_out_of_memory_names_the_savers_and_the_run_resumes(tiny_foundation, tmp_path, monkeypatch):
    import fedumm.federation.client as client

    original = client.train_steps
    calls = []

    def short_of_memory(*args, **kwargs):
        calls.append(args[0].runtime)  # the Learner's
        if len(calls) == 3:  # round 2's first client
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return original(*args, **kwargs)

    monkeypatch.setattr(client, "train_steps", short_of_memory)
    out = tmp_path / "run"
    result = run_tiny(out, tiny_foundation, "baselines.local=false", "federation.rounds=3")
    assert result.exit_code == 1
    assert "out of memory (CUDA out of memory. Tried to allocate 20.00 GiB)" in result.output
    assert MEMORY_ADVICE in result.output.replace("\n", "")
    assert f"the checkpoint of round 1 is in {out}" in result.output.replace("\n", "")

    result = run_tiny(
        out,
        tiny_foundation,
        "baselines.local=false",
        "federation.rounds=3",
        "runtime.micro_batch_size=4",
        cli=["--resume", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert calls[-1].micro_batch_size == 4
    assert json.loads((out / "results.json").read_text())["runtime"]["micro_batch_size"] == 4
