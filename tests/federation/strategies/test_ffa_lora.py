import torch

from fedumm.federation import wire
from fedumm.federation.client import Federated, local_schedule, local_update
from fedumm.federation.strategies import build_strategy
from fedumm.models.lora import factor_of
from fedumm.training import Learner

from .conftest import update


def test_a_stays_at_its_shared_init_and_only_b_travels(tiny):
    s = build_strategy("ffa_lora")
    message = s.broadcast(tiny.initial)
    assert {factor_of(k) for k in message} == {"lora_B"}
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
    assert any(not torch.equal(up[k], message[k]) for k in up)  # B trained
    trained = {k: p.detach() for k, p in tiny.model.named_parameters() if ".lora_A.default" in k}
    init_a = {k: v for k, v in tiny.initial.items() if factor_of(k) == "lora_A"}
    assert len(trained) == len(init_a)
    assert all(torch.equal(a, init_a[k.replace(".default", "")]) for k, a in trained.items())
    # Only B goes over the wire: fewer bytes than the whole adapter.
    assert wire.num_bytes(up) < wire.num_bytes(tiny.initial)
    # Trainability is restored for the next algorithm that uses this model.
    assert all(p.requires_grad for k, p in tiny.model.named_parameters() if ".default." in k)


def test_aggregate_averages_b_and_keeps_a():
    glob = {"m.lora_A.weight": torch.ones(2, 3), "m.lora_B.weight": torch.zeros(3, 2)}
    out = build_strategy("ffa_lora").aggregate(
        glob,
        [
            update("a", {"m.lora_B.weight": [[1.0] * 2] * 3}, 1),
            update("b", {"m.lora_B.weight": [[3.0] * 2] * 3}, 3),
        ],
    )
    assert torch.equal(out["m.lora_A.weight"], glob["m.lora_A.weight"])
    assert torch.allclose(out["m.lora_B.weight"], torch.full((3, 2), 2.5))
