"""Adapter helpers on a real peft model: folds, ranks, and the errors a user can hit."""

import copy

import pytest
import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict

from fedumm.models import foundation
from fedumm.models.lora import FOLD, add_lora, effective_delta, get_adapter, set_adapter


@pytest.fixture(scope="module")
def model(tiny_foundation):
    base, _ = foundation.load(tiny_foundation)
    return add_lora(base, 2, 4.0, 0.0, ["q_proj", "lm_head"], seed=0, extra_ranks=(4,))


def _effective_weight(model, module):
    layer = model.get_submodule(module)
    return layer.base_layer.weight + layer.get_delta_weight(model.active_adapter)


def test_folds_and_factors_set_the_effective_weight_and_restore(model):
    adapter = get_adapter(model)
    module = next(k for k in adapter if ".lora_A." in k).split(".lora_A.")[0]
    w0 = model.get_submodule(module).base_layer.weight.detach().clone()
    params = {k: torch.randn_like(v) for k, v in adapter.items()}
    params[FOLD + module] = torch.randn_like(w0)
    set_adapter(model, params)
    expected = w0 + effective_delta(params, 4.0)[module]
    assert torch.allclose(_effective_weight(model, module), expected, atol=1e-5)
    set_adapter(model, adapter)  # no fold: the base weight comes back exactly
    assert torch.equal(model.get_submodule(module).base_layer.weight, w0)


def test_the_rank_of_the_tensors_picks_the_adapter(model):
    set_adapter(model, {k: v for k, v in get_adapter(model).items()})
    assert model.active_adapter == "default"
    model.set_adapter("rank4")
    four = get_adapter(model)
    model.set_adapter("default")
    set_adapter(model, four)
    assert model.active_adapter == "rank4"
    assert next(iter(get_adapter(model).values())).shape[0] == 4
    with pytest.raises(ValueError, match="no adapter of rank 3"):
        set_adapter(model, {k: v[:3] if ".lora_A." in k else v[:, :3] for k, v in four.items()})
    set_adapter(model, {k: v[:2] if ".lora_A." in k else v[:, :2] for k, v in four.items()})


def test_a_rank_larger_than_the_layer_is_refused(tiny_foundation):
    base, _ = foundation.load(tiny_foundation)
    with pytest.raises(ValueError, match=r"LoRA rank 64 exceeds what .*q_proj \(32x32\) allows"):
        add_lora(base, 2, 4.0, 0.0, ["q_proj"], seed=0, extra_ranks=(64,))


def test_adapter_io_matches_peft_and_refuses_what_loading_would(model):
    """get/set_adapter keep a key -> parameter map instead of walking the model through peft
    each time: same keys and values as peft, writes that peft reads back, and the errors a
    state-dict load gives (a key the model lacks, a shape that differs) rather than a
    broadcast."""
    model.set_adapter("default")
    ours = get_adapter(model)
    peft = get_peft_model_state_dict(model, adapter_name="default", save_embedding_layers=False)
    assert ours.keys() == peft.keys()
    assert all(torch.equal(ours[k], peft[k]) for k in ours)
    new = {k: torch.randn_like(v) for k, v in ours.items()}
    set_adapter(model, new)
    back = get_peft_model_state_dict(model, adapter_name="default", save_embedding_layers=False)
    assert all(torch.equal(back[k], new[k]) for k in new)
    key = next(iter(new))
    with pytest.raises(KeyError, match="keys the model does not: \\['nowhere.lora_A.weight'\\]"):
        set_adapter(model, {**new, "nowhere.lora_A.weight": new[key]})
    row = next(k for k, v in new.items() if ".lora_B." in k)
    with pytest.raises(ValueError, match=f"{row!r} has shape \\(1, 2\\), the model's is"):
        set_adapter(model, {**new, row: new[row][:1]})
    set_peft_model_state_dict(model, ours, adapter_name="default")  # peft writes, we read
    assert all(torch.equal(get_adapter(model)[k], ours[k]) for k in ours)


def test_a_copied_model_writes_its_own_parameters(model):
    get_adapter(model)  # the map exists before the copy
    twin = copy.deepcopy(model)
    before = get_adapter(model)
    set_adapter(twin, {k: v + 1 for k, v in before.items()})
    assert all(torch.equal(get_adapter(model)[k], before[k]) for k in before)
    assert all(torch.equal(get_adapter(twin)[k], before[k] + 1) for k in before)
