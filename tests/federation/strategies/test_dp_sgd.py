"""Sample-level DP-SGD inside a client: per-sample clipping, calibrated noise, the accountant,
and a shared model left as it was."""

import json

import torch

from fedumm.dp_sgd import DPSGD, DPSGDSetting
from fedumm.federation.strategies.dp_fedavg import privacy_spent
from fedumm.models.lora import get_adapter, set_adapter
from fedumm.privacy_random import SeededRandom
from fedumm.training import Learner, Schedule, TrainingHooks, train_steps
from tests.tiny import run_tiny


def _random_adapter(tiny, seed=0):
    g = torch.Generator().manual_seed(seed)
    set_adapter(
        tiny.model, {k: 0.05 * torch.randn(v.shape, generator=g) for k, v in tiny.initial.items()}
    )


def _grads(tiny, dp=None, hooks=None):
    """The gradient of one batch of 6, as DP-SGD (dp = (C, z)) or plain, without a step."""
    _random_adapter(tiny)
    model = tiny.model
    private = DPSGD(model, DPSGDSetting(*dp), SeededRandom(3)) if dp else None
    batch = tiny.collate(tiny.client.data[:6])
    model.zero_grad(set_to_none=True)
    loss = (private.module if private else model)(**batch).loss
    (hooks or TrainingHooks()).loss(model, loss).backward()
    norms = private.privatize() if private else None
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    if private:
        private.close()
    return grads, norms


class HalfSquaredNorm(TrainingHooks):
    """A data-free term, like FedProx's: it must pass through DP-SGD unchanged."""

    def loss(self, model, task_loss):
        return task_loss + 0.5 * sum((p**2).sum() for p in model.parameters() if p.requires_grad)


def test_without_noise_and_with_a_loose_bound_it_is_the_plain_gradient(tiny):
    plain, _ = _grads(tiny, hooks=HalfSquaredNorm())
    private, norms = _grads(tiny, dp=(1e6, 0.0), hooks=HalfSquaredNorm())
    assert len(norms) == 6 and (norms > 0).all()
    for k in plain:
        assert torch.allclose(plain[k], private[k], atol=1e-6), k


def test_each_sample_is_clipped_to_the_bound(tiny):
    plain, _ = _grads(tiny)
    bound = 0.1
    private, norms = _grads(tiny, dp=(bound, 0.0))
    assert norms.min() > bound  # so every sample is clipped
    total = torch.cat([g.flatten() for g in private.values()]).norm()
    assert total <= bound + 1e-6  # the mean of vectors of norm <= C
    assert torch.cat([g.flatten() for g in plain.values()]).norm() > 2 * total


def test_noise_has_the_stated_standard_deviation(tiny):
    clean, _ = _grads(tiny, dp=(0.1, 0.0))
    noisy, _ = _grads(tiny, dp=(0.1, 2.0))
    diff = torch.cat([(noisy[k] - clean[k]).flatten() for k in clean]) * 6  # (1/B) * N(0, zC)
    assert diff.numel() > 1000
    assert abs(diff.std().item() - 2.0 * 0.1) < 0.01 and abs(diff.mean().item()) < 0.01


def test_training_with_dp_sgd_leaves_the_shared_model_unhooked(tiny):
    model = tiny.model
    hooks_before = sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())
    set_adapter(model, tiny.initial)
    learner, schedule = Learner(model, tiny.collate), Schedule(3, 4, 1e-3, 0)
    train_steps(learner, tiny.client.data, schedule, dp_sgd=DPSGDSetting(1.0, 1.0, True))
    moved = get_adapter(model)
    assert any(not torch.equal(moved[k], tiny.initial[k]) for k in moved)
    hooks_after = sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())
    assert hooks_after == hooks_before
    assert all(getattr(p, "grad_sample", None) is None for p in model.parameters())


def test_a_run_reports_each_clients_epsilon_from_the_accountant(tiny_foundation, tmp_path):
    out = tmp_path / "run"
    result = run_tiny(
        out,
        tiny_foundation,
        "federation.dp_sgd.enabled=true",
        "federation.dp_sgd.noise_multiplier=1.5",
    )
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    dp, sizes = results["dp_sgd"], results["partition"]["clients"]
    batch = results["config"]["federation"]["batch_size"]
    for client in sizes:
        mine = dp["per_client"][client["client_id"]]
        if mine["steps"]:
            expected = privacy_spent(1.5, min(1.0, batch / client["samples"]), mine["steps"], 1e-5)
            assert mine["epsilon"] == expected
    assert dp["epsilon"] == max(c["epsilon"] for c in dp["per_client"].values())
    assert "Privacy, sample-level (DP-SGD): epsilon" in (out / "report.md").read_text()


def test_dp_sgd_noise_is_not_the_run_seeds_unless_asked(tiny_foundation, tmp_path):
    """Two runs with one config: different noise (from the OS), so different adapters; with
    federation.seeded_privacy_noise the same, and the report says epsilon is a simulation's."""
    from safetensors.torch import load_file

    adapters = {}
    for name, seeded in (("a", "false"), ("b", "false"), ("c", "true"), ("d", "true")):
        result = run_tiny(
            tmp_path / name,
            tiny_foundation,
            "federation.dp_sgd.enabled=true",
            f"federation.seeded_privacy_noise={seeded}",
            "threads=1",
            "baselines.local=false",
            "baselines.centralized=false",
        )
        assert result.exit_code == 0, result.output
        adapters[name] = load_file(tmp_path / name / "global_adapter.safetensors")
    same = {
        pair: all(torch.equal(adapters[pair[0]][k], adapters[pair[1]][k]) for k in adapters["a"])
        for pair in ("ab", "cd")
    }
    assert same == {"ab": False, "cd": True}
    assert "Epsilon is a simulation figure" in (tmp_path / "c" / "report.md").read_text()
    assert "simulation figure" not in (tmp_path / "a" / "report.md").read_text()
