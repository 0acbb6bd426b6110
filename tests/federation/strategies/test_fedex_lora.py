"""FedEx-LoRA's aggregate is exact; FedAvg of the factors (FedIT) is not."""

import torch

from fedumm.federation.strategies import FederationContext, build_strategy
from fedumm.federation.update import ClientUpdate
from fedumm.models.lora import FOLD, effective_delta

ALPHA = 8.0


def factors(seed, r=4, d_in=6, d_out=5):
    g = torch.Generator().manual_seed(seed)
    return {
        "m.lora_A.weight": torch.randn(r, d_in, generator=g),
        "m.lora_B.weight": torch.randn(d_out, r, generator=g),
    }


def weighted_product(updates, r_of=lambda u: 4):
    total = sum(u.num_samples for u in updates)
    return sum(
        (u.num_samples / total)
        * (ALPHA / r_of(u))
        * (u.params["m.lora_B.weight"] @ u.params["m.lora_A.weight"])
        for u in updates
    )


def test_effective_weight_is_the_weighted_sum_of_client_products():
    w0 = torch.randn(5, 6)
    fold = torch.randn(5, 6)
    start = {**factors(0), FOLD + "m": fold}
    updates = [ClientUpdate(f"c{i}", factors(i + 1), n, 1) for i, n in enumerate((10, 30, 60))]
    ctx = FederationContext(num_clients=3, lora_alpha=ALPHA)
    out = build_strategy("fedex_lora", ctx).aggregate(start, updates)
    expected = w0 + fold + weighted_product(updates)
    assert torch.allclose(w0 + effective_delta(out, ALPHA)["m"], expected, atol=1e-5)

    fedit = build_strategy("fedavg").aggregate(factors(0), updates)  # FedAvg of factors
    gap = (w0 + effective_delta(fedit, ALPHA)["m"] - (w0 + weighted_product(updates))).abs().max()
    assert gap > 0.5  # averaging A and B separately misses the cross terms


def test_the_folded_residual_travels_down():
    s = build_strategy("fedex_lora", FederationContext(lora_alpha=ALPHA))
    updates = [ClientUpdate("a", factors(1), 1, 1), ClientUpdate("b", factors(2), 1, 1)]
    out = s.aggregate(factors(0), updates)
    assert set(s.broadcast(out)) == {"m.lora_A.weight", "m.lora_B.weight", FOLD + "m"}
    assert set(s.upload_template(out, "a")) == {"m.lora_A.weight", "m.lora_B.weight"}
