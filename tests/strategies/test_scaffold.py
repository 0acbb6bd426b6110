import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedumm.federation.client import local_update
from fedumm.federation.strategies import FederationContext, build_strategy
from fedumm.federation.strategies.scaffold import CONTROL

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
    return {**tiny.initial, **{CONTROL + k: torch.full_like(v, c_value)
                              for k, v in tiny.initial.items()}}  # fmt: skip


def test_option_two_identity_under_sgd(tiny):
    """c_i+ computed as the mean gradient equals c_i - c + (x - y) / (K eta_l) exactly."""
    fed = tiny.fed(optimizer="sgd", lr=0.05, max_grad_norm=None)
    s = build_strategy("scaffold", FederationContext(num_clients=2))
    state = {k: torch.full_like(v, 0.003) for k, v in tiny.initial.items()}  # c_i
    c_i = {k: v.clone() for k, v in state.items()}
    message = _message(tiny, -0.002)  # c
    steps = 5
    up = local_update(tiny.model, tiny.client, message, fed, 0, tiny.collate, s, state,
                      tiny.initial, steps=steps).params  # fmt: skip
    for k, x in tiny.initial.items():
        option_two = c_i[k] - (-0.002) + (x - up[k]) / (steps * 0.05)
        assert torch.allclose(state[k], option_two, atol=1e-5), k
        assert torch.allclose(up[CONTROL + k], state[k] - c_i[k], atol=1e-7)


def test_the_correction_is_applied_at_every_step(tiny):
    fed = tiny.fed(lr=0.01)

    def train(strategy, message, state):
        return local_update(tiny.model, tiny.client, message, fed, 0, tiny.collate, strategy, state,
                            tiny.initial, steps=3).params  # fmt: skip

    plain = train(build_strategy("fedavg"), tiny.initial, {})
    zero = train(build_strategy("scaffold"), _message(tiny, 0.0), {})
    corrected = train(build_strategy("scaffold"), _message(tiny, 0.05), {})
    for k in plain:
        assert torch.allclose(plain[k], zero[k], atol=1e-7)  # c = c_i = 0: plain training
    assert any(not torch.allclose(plain[k], corrected[k], atol=1e-4) for k in plain)


@given(st.lists(st.floats(-2, 2), min_size=2, max_size=4), st.integers(1, 100))
@settings(max_examples=30, deadline=None)
def test_zero_controls_one_step_equals_fedavg(values, n):
    """With c = c_i = 0 local training is plain, and with equal data the server step is FedAvg's."""
    start = {"w": torch.zeros(len(values))}
    ups = [update("a", {"w": values}, n), update("b", {"w": [-v for v in values]}, n)]
    zero = {CONTROL + "w": [0.0] * len(values)}
    scaffold = build_strategy("scaffold", FederationContext(num_clients=2)).aggregate(
        start, [update(u.client_id, {"w": u.params["w"].tolist(), **zero}, n) for u in ups]
    )
    assert torch.allclose(scaffold["w"], build_strategy("fedavg").aggregate(start, ups)["w"],
                          atol=1e-6)  # fmt: skip
