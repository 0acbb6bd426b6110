import torch

from fedumm.federation.client import Federated, local_schedule, local_update
from fedumm.federation.strategies import FederationContext, build_strategy
from fedumm.federation.update import ClientUpdate
from fedumm.models.lora import FOLD, effective_delta, initial_adapters
from fedumm.training import Learner

from .test_fedex_lora import ALPHA, factors, weighted_product


def test_stacking_is_exact_with_different_ranks():
    ranks = {"c0": 2, "c1": 4, "c2": 3}
    ctx = FederationContext(num_clients=3, lora_alpha=ALPHA, client_ranks=ranks)
    start = {**factors(0), FOLD + "m": torch.randn(5, 6)}
    start["m.lora_B.weight"].zero_()  # FLoRA's global factors are a fresh LoRA: B = 0
    updates = [
        ClientUpdate(c, factors(i + 1, r=r), n, 1)
        for i, ((c, r), n) in enumerate(zip(ranks.items(), (5, 10, 25)))
    ]
    out = build_strategy("flora", ctx).aggregate(start, updates)
    expected = start[FOLD + "m"] + weighted_product(updates, lambda u: ranks[u.client_id])
    assert torch.allclose(effective_delta(out, ALPHA)["m"], expected, atol=1e-5)


def test_messages_and_templates_follow_each_clients_rank():
    ctx = FederationContext(num_clients=2, lora_alpha=ALPHA, client_ranks={"a": 2, "b": 7})
    s = build_strategy("flora", ctx)
    glob = {**factors(0), FOLD + "m": torch.zeros(5, 6)}
    assert set(s.broadcast(glob)) == {FOLD + "m"}  # only the folded delta goes down
    assert s.upload_template(glob, "b")["m.lora_A.weight"].shape == (7, 6)
    assert s.upload_template(glob, "a")["m.lora_B.weight"].shape == (5, 2)


def test_a_client_of_another_rank_trains_its_own_adapter(tiny):
    fresh = initial_adapters(tiny.model)
    ctx = FederationContext(num_clients=1, lora_alpha=4.0, client_ranks={"site-1": 3})
    s = build_strategy("flora", ctx)
    fed = tiny.fed()
    up = local_update(
        Learner(tiny.model, tiny.collate),
        tiny.client,
        {},
        local_schedule(fed, 2, 0),
        Federated.of(fed, s, {}, fresh[3]),
    ).params
    template = s.upload_template(tiny.initial, "site-1")
    assert {k: v.shape for k, v in up.items()} == {k: v.shape for k, v in template.items()}
