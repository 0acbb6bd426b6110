import torch

from fedumm.federation.client import Federated, local_schedule, local_update
from fedumm.federation.strategies import build_strategy
from fedumm.models.lora import factor_of
from fedumm.training import Learner


def test_b_stays_on_the_client_and_a_is_shared(tiny):
    s = build_strategy("fedsa_lora")
    message = s.broadcast(tiny.initial)
    assert {factor_of(k) for k in message} == {"lora_A"}
    state = {}
    fed = tiny.fed(lr=0.05)
    up = local_update(
        Learner(tiny.model, tiny.collate),
        tiny.client,
        message,
        local_schedule(fed, 3, 0),
        Federated.of(fed, s, state, tiny.initial),
    ).params
    assert set(up) == set(message)
    assert {factor_of(k) for k in state} == {"lora_B"}
    assert any(v.abs().sum() > 0 for v in state.values())  # B learned, kept locally
    kept = {k: v.clone() for k, v in state.items()}
    # Next round starts from the new shared A and the client's own B.
    start = s.client_start(up, state, tiny.initial)
    assert all(torch.equal(start[k], kept[k]) for k in kept)
    personal = s.personal_adapter({**tiny.initial, **up}, state)
    assert all(torch.equal(personal[k], kept[k]) for k in kept)
