from functools import partial

import torch

from fedumm.models.processor import Encoded, collate
from fedumm.training import TrainingHooks, batches, nonfinite, train_steps


class _TinyLM(torch.nn.Module):
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
    a, b = _TinyLM(), _TinyLM()
    b.load_state_dict(a.state_dict())
    first = train_steps(a, DATA, 1, 4, 0.05, 0.0, seed=3, collate=BATCH).loss
    last = train_steps(a, DATA, 60, 4, 0.05, 0.0, seed=3, collate=BATCH).loss
    train_steps(b, DATA, 1, 4, 0.05, 0.0, seed=3, collate=BATCH)
    train_steps(b, DATA, 60, 4, 0.05, 0.0, seed=3, collate=BATCH)
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
    plain, pulled = _TinyLM(), _TinyLM()
    pulled.load_state_dict(plain.state_dict())
    train_steps(plain, DATA, 20, 4, 0.05, 0.0, seed=0, collate=BATCH)
    train_steps(pulled, DATA, 20, 4, 0.05, 0.0, seed=0, collate=BATCH, hooks=PullToZero())
    assert PullToZero.calls == 20
    norm = lambda m: sum(float((p.detach() ** 2).sum()) for p in m.parameters())  # noqa: E731
    assert norm(pulled) < 0.5 * norm(plain)


def test_empty_data_is_an_error():
    import pytest

    with pytest.raises(ValueError, match="empty data set"):
        train_steps(_TinyLM(), [], 1, 4, 0.1, 0.0, seed=0, collate=BATCH)


def test_freed_host_memory_is_handed_back_every_trim_every_steps(monkeypatch):
    """A long loop trims the C heap (glibc keeps what batches of varying size free: a CPU
    pretraining grew to 23 GB without it); on this Linux machine the trim is really there."""
    import fedumm.runtime as runtime
    import fedumm.training as training

    assert runtime._TRIM is not None  # CI and the GPU machines run glibc
    calls = []
    monkeypatch.setattr(training, "release_host_memory", lambda: calls.append(1))
    train_steps(_TinyLM(), DATA, 2 * training.TRIM_EVERY + 1, 4, 0.05, 0.0, seed=0, collate=BATCH)
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
