"""FedMLLM's modality scenarios: what each client's samples keep."""

import numpy as np
import pytest

from fedumm.data.modality import (
    IMAGE,
    IMAGE_TEXT,
    TEXT,
    assign_modalities,
    cross_modality,
    hybrid_modality,
    missing_modality,
    modality_counts,
)

SIZES = [4000, 3000, 2000]


def rng(seed=0):
    return np.random.default_rng(seed)


def test_aligned_keeps_both_everywhere():
    kept = assign_modalities("aligned", SIZES, rng())
    assert [len(k) for k in kept] == SIZES
    assert all((k == IMAGE_TEXT).all() for k in kept)


@pytest.mark.parametrize("beta", [0.3, 0.5])
def test_missing_drops_each_modality_at_the_documented_rate_and_never_both(beta):
    codes = np.concatenate(missing_modality(SIZES, beta, rng()))
    # A sample that would lose both keeps one by a coin: each is missing beta - beta^2 / 2.
    expected = beta - beta**2 / 2
    assert abs(np.mean(codes == TEXT) - expected) < 0.015  # image missing
    assert abs(np.mean(codes == IMAGE) - expected) < 0.015  # text missing
    assert abs(np.mean(codes == IMAGE_TEXT) - (1 - beta) ** 2) < 0.015
    assert set(np.unique(codes)) <= {IMAGE_TEXT, IMAGE, TEXT}


def test_missing_with_zero_beta_is_aligned_and_with_one_is_a_coin():
    assert (np.concatenate(missing_modality(SIZES, 0.0, rng())) == IMAGE_TEXT).all()
    codes = np.concatenate(missing_modality(SIZES, 1.0, rng()))
    assert not (codes == IMAGE_TEXT).any()
    assert abs(np.mean(codes == IMAGE) - 0.5) < 0.02


@pytest.mark.parametrize("k", [0, 3, 7, 10])
def test_cross_makes_k_clients_image_only_and_the_rest_text_only(k):
    kept = cross_modality([50] * 10, k, rng())
    kinds = [set(np.unique(c)) for c in kept]
    assert kinds.count({IMAGE}) == k and kinds.count({TEXT}) == 10 - k


def test_hybrid_clients_share_one_presence_vector_and_neither_becomes_a_coin():
    kept = hybrid_modality([400] * 200, 0.6, rng())
    kinds = [frozenset(np.unique(c)) for c in kept]
    mixed = [k for k in kinds if len(k) > 1]
    assert all(k == {IMAGE, TEXT} for k in mixed)  # drew neither: coin per sample
    share = {kind: kinds.count(frozenset({kind})) / 200 for kind in (IMAGE_TEXT, IMAGE, TEXT)}
    assert abs(share[IMAGE_TEXT] - 0.36) < 0.1 and abs(len(mixed) / 200 - 0.16) < 0.08
    assert abs(share[IMAGE] - 0.24) < 0.1 and abs(share[TEXT] - 0.24) < 0.1


def test_scenarios_are_seeded():
    a = assign_modalities("missing", SIZES, rng(3), beta=0.4)
    b = assign_modalities("missing", SIZES, rng(3), beta=0.4)
    c = assign_modalities("missing", SIZES, rng(4), beta=0.4)
    assert all((x == y).all() for x, y in zip(a, b))
    assert any((x != z).any() for x, z in zip(a, c))


def test_bad_values_are_named():
    with pytest.raises(ValueError, match="beta.*1.5"):
        missing_modality(SIZES, 1.5, rng())
    with pytest.raises(ValueError, match="p .*-0.1"):
        hybrid_modality(SIZES, -0.1, rng())
    with pytest.raises(ValueError, match=r"image_only_clients \(4\).*\(3\)"):
        cross_modality(SIZES, 4, rng())
    with pytest.raises(ValueError, match="unknown modality scenario 'partial'.*hybrid"):
        assign_modalities("partial", SIZES, rng())


def test_modality_counts_lists_every_combination():
    assert modality_counts(np.array([IMAGE, IMAGE, TEXT])) == {IMAGE_TEXT: 0, IMAGE: 2, TEXT: 1}
