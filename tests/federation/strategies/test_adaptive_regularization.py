"""FedMLLM's adaptive regularization: a proximal term on the middle layers' adapters only."""

import pytest
import torch

from fedumm.federation.adaptive_regularization import middle_layer_keys, middle_layer_proximal
from fedumm.federation.client import Federated, local_schedule, local_update
from fedumm.federation.strategies import build_strategy
from fedumm.models.lora import adapter_parameters, set_adapter
from fedumm.training import Learner
from tests.tiny import run_tiny


def test_middle_layers_are_s_to_L_minus_1_minus_s():
    keys = [f"base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight" for i in range(6)]
    keys.append("base_model.model.lm_head.lora_A.weight")
    assert middle_layer_keys(keys, 6, 2) == keys[2:4]  # layers 2 and 3 of 0..5
    assert middle_layer_keys(keys, 6, 0) == keys[:6]  # every layer, never lm_head
    with pytest.raises(ValueError, match="skip_layers=3 leaves no middle layer of the model's 6"):
        middle_layer_keys(keys, 6, 3)


def test_term_value_and_gradient_cover_the_middle_layers_only(tiny):
    set_adapter(tiny.model, tiny.initial)
    live = adapter_parameters(tiny.model)
    anchor = {k: v + 0.5 for k, v in tiny.initial.items()}  # every entry 0.5 away
    hook = middle_layer_proximal(tiny.model, anchor, mu=0.2, weight=0.5, skip=0)
    middle = [k for k in anchor if ".layers." in k]
    assert 0 < len(middle) < len(anchor)  # lm_head's adapter is outside the layers
    loss = hook.loss(tiny.model, torch.tensor(1.0))
    numel = sum(anchor[k].numel() for k in middle)
    assert abs(loss.item() - (1 + 0.5 * 0.2 * 0.5 * numel * 0.25)) < 1e-4  # 1 + mu w/2 * |d|^2
    loss.backward()
    for k, p in live.items():  # d/dw = mu * w * (w - anchor) = 0.1 * -0.5 in the middle, else 0
        if k in anchor:
            expected = -0.05 if k in middle else 0.0
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            assert torch.allclose(grad, torch.full_like(p, expected), atol=1e-6), k
        p.grad = None


def test_it_pulls_the_middle_layers_towards_the_global_adapter(tiny):
    def moved(enabled: bool, strategy: str) -> dict[str, float]:
        reg = {"enabled": enabled, "mu": 500.0, "weight": 1.0, "skip_layers": 0}
        fed = tiny.fed(lr=0.05, adaptive_regularization=reg)
        out = local_update(
            Learner(tiny.model, tiny.collate),
            tiny.client,
            tiny.initial,
            local_schedule(fed, 6, 0),
            Federated.of(fed, build_strategy(strategy), {}, tiny.initial),
        ).params
        dist = {"middle": 0.0, "outer": 0.0}
        for k in out:
            dist["middle" if ".layers." in k else "outer"] += float(
                ((out[k] - tiny.initial[k]) ** 2).sum()
            )
        return dist

    free, held = moved(False, "fedavg"), moved(True, "fedavg")
    assert held["middle"] < 0.5 * free["middle"] and held["outer"] > 0.5 * free["outer"]
    assert moved(True, "fedprox")["middle"] < 0.5 * free["middle"]  # beside another strategy


def test_a_layer_range_the_model_lacks_is_refused_before_training(tiny_foundation, tmp_path):
    result = run_tiny(
        tmp_path / "r",
        tiny_foundation,
        "federation.adaptive_regularization.enabled=true",
        "federation.adaptive_regularization.skip_layers=1",
    )
    assert result.exit_code == 1
    assert "skip_layers=1 leaves no middle layer of the model's 2" in result.output
