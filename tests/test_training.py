from functools import partial

import pytest
import torch

from fedumm.dp_sgd import DPSGDSetting
from fedumm.models.processor import Encoded, collate
from fedumm.privacy_random import PrivacyRandom, SeededRandom
from fedumm.training import (
    Learner,
    Schedule,
    TrainingHooks,
    batches,
    nonfinite,
    train_steps,
)


class TinyLM(torch.nn.Module):
    """Predicts the next token from the current one: enough to exercise the loop."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(8, 8)
        self.out = torch.nn.Linear(8, 8)

    def forward(self, input_ids, attention_mask, labels):
        logits = self.out(self.emb(input_ids))
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, 8), labels[:, 1:].reshape(-1), ignore_index=-100
        )
        return type("Out", (), {"loss": loss})()


DATA = [Encoded([1, 2, 3, 4], [-100, 2, 3, 4]), Encoded([1, 5, 6], [-100, 5, 6])] * 4
BATCH = partial(collate, pad_id=0)


def test_batches_cover_every_sample_each_epoch():
    gen = torch.Generator().manual_seed(0)
    seen = [i for b in batches(10, 5, 4, lambda n: torch.randperm(n, generator=gen)) for i in b]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))


def test_loop_is_seeded_and_learns():
    torch.manual_seed(0)
    a, b = TinyLM(), TinyLM()
    b.load_state_dict(a.state_dict())
    first = train_steps(Learner(a, BATCH), DATA, Schedule(1, 4, 0.05, seed=3)).loss
    last = train_steps(Learner(a, BATCH), DATA, Schedule(60, 4, 0.05, seed=3)).loss
    train_steps(Learner(b, BATCH), DATA, Schedule(1, 4, 0.05, seed=3))
    train_steps(Learner(b, BATCH), DATA, Schedule(60, 4, 0.05, seed=3))
    assert last < first / 2
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_hooks_change_local_training():
    """A strategy's hooks (here: a pull of every weight to zero) reach every step."""

    class PullToZero(TrainingHooks):
        calls = 0

        def loss(self, model, task_loss):
            return task_loss + 10.0 * sum((p**2).sum() for p in model.parameters())

        def before_step(self, model):
            PullToZero.calls += 1

    torch.manual_seed(0)
    plain, pulled = TinyLM(), TinyLM()
    pulled.load_state_dict(plain.state_dict())
    train_steps(Learner(plain, BATCH), DATA, Schedule(20, 4, 0.05, seed=0))
    train_steps(Learner(pulled, BATCH), DATA, Schedule(20, 4, 0.05, seed=0), PullToZero())
    assert PullToZero.calls == 20
    norm = lambda m: sum(float((p.detach() ** 2).sum()) for p in m.parameters())  # noqa: E731
    assert norm(pulled) < 0.5 * norm(plain)


def test_empty_data_is_an_error():
    with pytest.raises(ValueError, match="empty data set"):
        train_steps(Learner(TinyLM(), BATCH), [], Schedule(1, 4, 0.1, seed=0))


def test_freed_host_memory_is_handed_back_every_trim_every_steps(monkeypatch):
    """A long loop trims the C heap (glibc keeps what batches of varying size free: a CPU
    pretraining grew to 23 GB without it); on this Linux machine the trim is really there."""
    import fedumm.runtime as runtime
    import fedumm.training as training

    assert runtime._TRIM is not None  # CI and the GPU machines run glibc
    calls = []
    monkeypatch.setattr(training, "release_host_memory", lambda: calls.append(1))
    train_steps(Learner(TinyLM(), BATCH), DATA, Schedule(2 * training.TRIM_EVERY + 1, 4, 0.05, 0))
    assert len(calls) == 2
    runtime.release_host_memory()  # the real call returns without error


def test_nonfinite_names_every_bad_tensor_and_not_an_overflowing_norm():
    """One fused norm screens the tensors: a finite fp16 tensor whose norm overflows is not
    called infinite, integer tensors (masked uploads) are skipped, each bad one is named."""
    big = torch.full((4,), 60000.0, dtype=torch.float16)  # finite; its norm is not in fp16
    assert torch.isinf(torch.linalg.vector_norm(big))
    ok = {"big": big, "ints": torch.arange(3), "w": torch.ones(2)}
    assert nonfinite(ok) == []
    bad = {**ok, "x": torch.tensor([1.0, float("nan")]), "y": torch.tensor([float("-inf")])}
    assert nonfinite(bad) == ["x", "y"]


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _trained(schedule: Schedule, dp_sgd: DPSGDSetting | None = None) -> list[torch.Tensor]:
    """The weights of a fixed TinyLM after `schedule`'s steps."""
    torch.manual_seed(0)
    model = TinyLM()
    train_steps(Learner(model, BATCH), DATA, schedule, dp_sgd=dp_sgd)
    return _weights(model)


def test_a_schedule_gives_the_rate_of_each_step():
    assert Schedule(3, 4, 0.05, 0).lr_at(2) == 0.05
    assert Schedule(3, 4, lambda step: 0.1 * step, 0).lr_at(2) == pytest.approx(0.2)


def test_a_constant_rate_and_a_schedule_of_that_rate_train_the_same_weights():
    constant = _trained(Schedule(5, 4, 0.05, 0))
    scheduled = _trained(Schedule(5, 4, lambda step: 0.05, 0))
    assert all(torch.equal(a, b) for a, b in zip(constant, scheduled))


def test_each_step_takes_its_scheduled_rate():
    """A rate of 0 after the first step: five SGD steps end where the first left the weights."""
    first_only = Schedule(5, 4, lambda step: 0.05 if step == 0 else 0.0, 0, optimizer="sgd")
    one = _trained(Schedule(1, 4, 0.05, 0, optimizer="sgd"))
    assert all(torch.equal(a, b) for a, b in zip(_trained(first_only), one))


def test_a_schedule_refuses_what_no_loop_can_take():
    with pytest.raises(ValueError, match="steps >= 1"):
        Schedule(0, 4, 0.05, 0)
    with pytest.raises(ValueError, match="steps >= 1"):
        Schedule(3, 0, 0.05, 0)
    with pytest.raises(ValueError, match="'adam' is none of adamw, sgd"):
        Schedule(3, 4, 0.05, 0, optimizer="adam")


def test_a_dp_sgd_setting_refuses_a_bound_or_noise_out_of_range():
    with pytest.raises(ValueError, match="clip norm > 0, got 0"):
        DPSGDSetting(0.0, 1.0)
    with pytest.raises(ValueError, match="noise multiplier >= 0, got -1"):
        DPSGDSetting(1.0, -1.0)
    assert DPSGDSetting(1.0, 0.0).noise_multiplier == 0.0


def test_dp_sgd_randomness_is_the_run_seeds_only_when_asked():
    assert isinstance(DPSGDSetting(1.0, 1.0).randomness(3), PrivacyRandom)
    seeded = DPSGDSetting(1.0, 1.0, seeded_noise=True)
    assert isinstance(seeded.randomness(3), SeededRandom)
    assert torch.equal(
        seeded.randomness(3).normal((4,), 1.0), seeded.randomness(3).normal((4,), 1.0)
    )


def test_dp_sgd_steps_with_seeded_noise_repeat_and_differ_from_plain_steps():
    private = DPSGDSetting(0.5, 1.0, seeded_noise=True)
    once, again = (
        _trained(Schedule(3, 4, 0.05, 0), private),
        _trained(Schedule(3, 4, 0.05, 0), private),
    )
    assert all(torch.equal(a, b) for a, b in zip(once, again))
    plain = _trained(Schedule(3, 4, 0.05, 0))
    assert any(not torch.equal(a, b) for a, b in zip(once, plain))
