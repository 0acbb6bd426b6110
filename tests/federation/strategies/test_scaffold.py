import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedumm.federation.client import Federated, local_schedule, local_update
from fedumm.federation.strategies import FederationContext, build_strategy
from fedumm.federation.strategies.scaffold import CONTROL
from fedumm.training import Learner

from .conftest import update


def test_server_round_hand_computed():
    s = build_strategy("scaffold", FederationContext(num_clients=4), server_lr=0.5)
    x = {"w": torch.tensor([1.0, 0.0])}
    assert torch.equal(s.broadcast(x)[CONTROL + "w"], torch.zeros(2))  # c starts at zero
    updates = [
        update("a", {"w": [2.0, 1.0], CONTROL + "w": [0.4, 0.0]}, 10),
        update("b", {"w": [0.0, 3.0], CONTROL + "w": [0.0, 0.8]}, 30),
    ]
    x = s.aggregate(x, updates)
    # x + 0.5 * mean([1, 1], [-1, 3]) = [1, 1]   (uniform mean, as in the paper)
    assert torch.allclose(x["w"], torch.tensor([1.0, 1.0]), atol=1e-6)
    # c + (1 / N) * sum Delta c_i = [0.4, 0.8] / 4
    assert torch.allclose(s.broadcast(x)[CONTROL + "w"], torch.tensor([0.1, 0.2]), atol=1e-6)


def _message(tiny, c_value):
    return {
        **tiny.initial,
        **{CONTROL + k: torch.full_like(v, c_value) for k, v in tiny.initial.items()},
    }


def test_option_two_identity_under_sgd(tiny):
    """c_i+ computed as the mean gradient equals c_i - c + (x - y) / (K eta_l) exactly."""
    fed = tiny.fed(optimizer="sgd", lr=0.05, max_grad_norm=None)
    s = build_strategy("scaffold", FederationContext(num_clients=2))
    state = {k: torch.full_like(v, 0.003) for k, v in tiny.initial.items()}  # c_i
    c_i = {k: v.clone() for k, v in state.items()}
    message = _message(tiny, -0.002)  # c
    steps = 5
    up = local_update(
        Learner(tiny.model, tiny.collate),
        tiny.client,
        message,
        local_schedule(fed, steps, 0),
        Federated.of(fed, s, state, tiny.initial),
    ).params
    for k, x in tiny.initial.items():
        option_two = c_i[k] - (-0.002) + (x - up[k]) / (steps * 0.05)
        assert torch.allclose(state[k], option_two, atol=1e-5), k
        assert torch.allclose(up[CONTROL + k], state[k] - c_i[k], atol=1e-7)


def test_the_correction_is_applied_at_every_step(tiny):
    fed = tiny.fed(lr=0.01)

    def train(strategy, message, state):
        return local_update(
            Learner(tiny.model, tiny.collate),
            tiny.client,
            message,
            local_schedule(fed, 3, 0),
            Federated.of(fed, strategy, state, tiny.initial),
        ).params

    plain = train(build_strategy("fedavg"), tiny.initial, {})
    zero = train(build_strategy("scaffold"), _message(tiny, 0.0), {})
    corrected = train(build_strategy("scaffold"), _message(tiny, 0.05), {})
    for k in plain:
        assert torch.allclose(plain[k], zero[k], atol=1e-7)  # c = c_i = 0: plain training
    assert any(not torch.allclose(plain[k], corrected[k], atol=1e-4) for k in plain)


@given(
    st.lists(st.floats(0.5, 2.0), min_size=1, max_size=4),
    st.integers(1, 50),
    st.integers(1, 50),
    st.floats(0.1, 1.0),
    st.floats(-1.0, 1.0),
)
@settings(max_examples=40, deadline=None)
def test_the_server_step_is_scaffolds_not_fedavgs_nor_a_no_op(values, n, extra, eta, dc):
    """x + eta * uniform mean of the client moves, c moved by sum(dc) / N: computed by hand and
    told apart from FedAvg (sample-weighted) and from an aggregator that ignores its input."""
    a = torch.tensor(values)
    b = a + 1.0  # two clients that moved differently...
    x = torch.zeros_like(a)
    ups = [
        update("a", {"w": a.tolist(), CONTROL + "w": [dc] * len(a)}, n),
        update("b", {"w": b.tolist(), CONTROL + "w": [2 * dc] * len(a)}, n + extra),
    ]  # ...with
    s = build_strategy("scaffold", FederationContext(num_clients=4), server_lr=eta)  # unequal data
    out = s.aggregate({"w": x}, ups)["w"]
    assert torch.allclose(out, x + eta * ((a - x) + (b - x)) / 2, atol=1e-6)
    assert torch.allclose(s.c["w"], torch.full_like(a, 3 * dc / 4), atol=1e-6)
    assert not torch.allclose(out, x, atol=1e-3)  # not a no-op
    full_step = build_strategy("scaffold", FederationContext(num_clients=4)).aggregate(
        {"w": x}, ups
    )
    fedavg = build_strategy("fedavg").aggregate({"w": x}, ups)["w"]
    # uniform over the clients (a + 0.5), not weighted by their samples (FedAvg)
    assert torch.allclose(full_step["w"], a + 0.5, atol=1e-6)
    assert not torch.allclose(full_step["w"], fedavg, atol=1e-4)
