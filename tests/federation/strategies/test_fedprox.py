import torch

from fedumm.federation.client import Federated, local_schedule, local_update
from fedumm.federation.strategies import build_strategy
from fedumm.federation.strategies.fedprox import ProximalTerm
from fedumm.models.lora import adapter_parameters, set_adapter
from fedumm.training import Learner

from .conftest import update


def test_proximal_term_value_and_gradient(tiny):
    set_adapter(tiny.model, tiny.initial)
    live = adapter_parameters(tiny.model)
    anchor = {k: v + 0.5 for k, v in tiny.initial.items()}  # every entry 0.5 away
    hook = ProximalTerm(tiny.model, anchor, mu=0.2)
    loss = hook.loss(tiny.model, torch.tensor(1.0))
    numel = sum(v.numel() for v in anchor.values())
    # 1 + (0.2 / 2) * numel * 0.5^2
    assert abs(loss.item() - (1 + 0.1 * numel * 0.25)) < 1e-4
    loss.backward()
    for p in live.values():  # d/dw = mu * (w - anchor) = 0.2 * -0.5
        assert torch.allclose(p.grad, torch.full_like(p, -0.1), atol=1e-6)
        p.grad = None


def test_fedprox_aggregates_like_fedavg():
    updates = [update("a", {"w": [1.0, 2.0]}, 10), update("b", {"w": [4.0, -1.0]}, 30)]
    start = {"w": torch.zeros(2)}
    prox = build_strategy("fedprox", mu=0.5).aggregate(start, updates)
    assert torch.equal(prox["w"], build_strategy("fedavg").aggregate(start, updates)["w"])


def test_proximal_term_pulls_local_training_towards_the_global_adapter(tiny):
    def distance(mu):
        strategy = build_strategy("fedprox", mu=mu)
        fed = tiny.fed(lr=0.05)
        out = local_update(
            Learner(tiny.model, tiny.collate),
            tiny.client,
            tiny.initial,
            local_schedule(fed, 6, 0),
            Federated.of(fed, strategy, {}, tiny.initial),
        ).params
        return sum(float(((out[k] - tiny.initial[k]) ** 2).sum()) for k in out)

    assert distance(50.0) < 0.5 * distance(0.0)
