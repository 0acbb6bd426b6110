import pytest
import torch

from fedumm.federation.update import ClientUpdate, UpdateRejected, validate_update

REF = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}


def _with(**params):
    return ClientUpdate("site-7", {**{k: v.clone() for k, v in REF.items()}, **params}, 10, 1)


@pytest.mark.parametrize(
    "update, reason",
    [
        (ClientUpdate("site-7", {"a": torch.zeros(2, 3)}, 10, 1), "missing 1 key(s), e.g. 'b'"),
        (_with(c=torch.zeros(1)), "unexpected 1 key(s), e.g. 'c'"),
        (_with(a=torch.zeros(3, 2)), "'a' has shape (3, 2), expected (2, 3)"),
        (_with(b=torch.zeros(4, dtype=torch.float64)), "'b' has dtype torch.float64"),
        (_with(b=torch.tensor([0.0, float("nan"), 0.0, 0.0])), "'b' contains NaN or infinite"),
        (_with(a=torch.full((2, 3), float("inf"))), "'a' contains NaN or infinite"),
        (ClientUpdate("site-7", dict(REF), 0, 1), "num_samples must be positive"),
    ],
)
def test_malformed_updates_are_rejected_with_the_reason(update, reason):
    with pytest.raises(UpdateRejected) as err:
        validate_update(update, REF)
    assert "client site-7" in str(err.value) and reason in str(err.value)


def test_a_well_formed_update_passes():
    validate_update(_with(), REF)
