import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedumm.data import partition as partition_module
from fedumm.data.partition import (
    dirichlet_label_skew,
    iid,
    label_counts,
    pathological_shards,
    quantity_skew,
)


def _covers_exactly_once(parts, n):
    flat = np.concatenate(parts)
    return len(flat) == n and set(flat.tolist()) == set(range(n))


@given(n=st.integers(10, 500), k=st.integers(1, 10), seed=st.integers(0, 2**16))
@settings(max_examples=40, deadline=None)
def test_iid_is_a_partition(n, k, seed):
    parts = iid(n, k, np.random.default_rng(seed))
    assert len(parts) == k and _covers_exactly_once(parts, n)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


@given(alpha=st.sampled_from([0.1, 0.5, 1.0, 5.0]), k=st.integers(2, 8), seed=st.integers(0, 999))
@settings(max_examples=30, deadline=None)
def test_dirichlet_is_a_partition_with_minimum_size(alpha, k, seed):
    labels = np.random.default_rng(seed).integers(0, 6, size=600)
    parts, _ = dirichlet_label_skew(labels, k, alpha, np.random.default_rng(seed), min_samples=10)
    assert _covers_exactly_once(parts, 600)
    assert min(map(len, parts)) >= 10


def test_dirichlet_is_seeded():
    labels = np.arange(1000) % 7
    a, _ = dirichlet_label_skew(labels, 5, 0.5, np.random.default_rng(1))
    b, _ = dirichlet_label_skew(labels, 5, 0.5, np.random.default_rng(1))
    c, _ = dirichlet_label_skew(labels, 5, 0.5, np.random.default_rng(2))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_smaller_alpha_means_more_label_skew():
    labels = np.arange(4000) % 10

    def mean_top_share(alpha):
        shares = []
        for seed in range(5):
            parts, _ = dirichlet_label_skew(labels, 8, alpha, np.random.default_rng(seed))
            counts = label_counts(labels, parts).rows(list(range(8)))
            shares.extend(counts.max(axis=1) / counts.sum(axis=1))
        return np.mean(shares)

    assert mean_top_share(0.1) > mean_top_share(1.0) + 0.2 > mean_top_share(100.0) + 0.2


def test_bad_arguments_are_named():
    labels = np.zeros(10)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        dirichlet_label_skew(labels, 2, 0.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="cannot give 4 clients at least 5"):
        dirichlet_label_skew(labels, 4, 1.0, np.random.default_rng(0), min_samples=5)
    with pytest.raises(ValueError, match="cannot split 3 samples over 4 clients"):
        iid(3, 4, np.random.default_rng(0))


def test_label_counts_keeps_the_cells_that_are_not_zero():
    labels = np.array(["a", "b", "a", "c"])
    counts = label_counts(labels, [np.array([0, 2]), np.array([1, 3]), np.array([], int)])
    assert counts.labels == ["a", "b", "c"]
    assert list(zip(counts.client, counts.label, counts.count)) == [(0, 0, 2), (1, 1, 1), (1, 2, 1)]
    assert counts.rows([0, 1, 2]).tolist() == [[2, 0, 0], [0, 1, 1], [0, 0, 0]]
    assert counts.rows([2, 0]).tolist() == [[0, 0, 0], [2, 0, 0]]
    assert counts.sizes().tolist() == [2, 2, 0] and counts.distinct().tolist() == [1, 2, 0]
    entropy = counts.entropy()
    assert entropy[0] == 0.0 and entropy[1] == pytest.approx(1.0) and np.isnan(entropy[2])


def test_a_draw_that_puts_a_label_only_on_full_clients_spreads_it_over_the_others():
    labels = np.array([0] * 60 + [1] * 40)

    class OneHot:  # every label's weight on client 0 alone, as tiny alphas draw
        def __init__(self):
            self.rng = np.random.default_rng(0)

        def dirichlet(self, alpha):
            return np.eye(len(alpha))[0]

        def __getattr__(self, name):
            return getattr(self.rng, name)

    parts, _ = dirichlet_label_skew(labels, 4, 0.01, OneHot())
    # label 0 fills client 0 past its share (25); label 1 goes evenly to clients 1, 2, 3
    assert [len(p) for p in parts] == [60, 13, 13, 14]


def _labels_held(labels, parts):
    return label_counts(labels, parts).distinct().tolist()


def test_a_draw_that_leaves_clients_short_is_repaired_from_the_largest():
    labels = np.random.default_rng(0).integers(0, 10, size=3000)
    k, m = 1000, 2  # 3 samples a client on average: no Dirichlet(0.3) draw gives all of them 2
    rng = np.random.default_rng(4)
    parts, note = dirichlet_label_skew(labels, k, 0.3, rng, min_samples=m, max_tries=5)
    assert _covers_exactly_once(parts, 3000) and min(map(len, parts)) >= m
    assert note["draws"] == 5 and note["repaired_clients"] > 0
    # what moved is the shortfall of the draw it repaired, taken from the largest clients
    again = np.random.default_rng(4)
    best = None
    for _ in range(5):
        owner, sizes = partition_module._dirichlet_draw(
            [np.flatnonzero(labels == c) for c in range(10)], 3000, k, 0.3, again
        )
        short = np.maximum(m - sizes, 0)
        if best is None or short.sum() < best[1].sum():
            best = sizes, short
    before, short = best
    after = np.array([len(p) for p in parts])
    assert note["repaired_clients"] == np.count_nonzero(short)
    assert note["moved_samples"] == short.sum() == (after - before)[after > before].sum()
    donors = after < before
    assert before[donors].min() >= before[~donors].max()  # only the largest gave
    assert after[donors].max() - after[donors].min() <= 1  # cut down to one level


def test_repair_is_seeded_and_only_used_when_needed():
    labels = np.arange(3000) % 10
    a, note_a = dirichlet_label_skew(labels, 1000, 0.3, np.random.default_rng(1), 2, max_tries=3)
    b, _ = dirichlet_label_skew(labels, 1000, 0.3, np.random.default_rng(1), 2, max_tries=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and note_a["repaired_clients"] > 0
    _, note = dirichlet_label_skew(labels, 4, 1.0, np.random.default_rng(1), min_samples=10)
    assert note == {"draws": 1, "repaired_clients": 0, "moved_samples": 0}


@given(law=st.sampled_from(["dirichlet", "power"]), k=st.integers(2, 10), seed=st.integers(0, 999))
@settings(max_examples=30, deadline=None)
def test_quantity_skew_is_a_partition_with_minimum_size(law, k, seed):
    parts = quantity_skew(500, k, np.random.default_rng(seed), law, alpha=0.3, min_samples=7)
    assert len(parts) == k and _covers_exactly_once(parts, 500)
    assert min(map(len, parts)) >= 7


def test_quantity_skew_sizes_follow_the_law():
    parts = quantity_skew(3100, 4, np.random.default_rng(0), "power", exponent=1.0)
    # shares 1 : 1/2 : 1/3 : 1/4 of 3100 -> 1488, 744, 496, 372 in some order
    assert sorted(map(len, parts)) == [372, 496, 744, 1488]
    labels = np.arange(3100) % 5  # sizes skewed, labels not: every client sees every label
    assert all(n == 5 for n in _labels_held(labels, parts))
    with pytest.raises(ValueError, match="unknown quantity law 'zipf'"):
        quantity_skew(100, 2, np.random.default_rng(0), "zipf")


@given(k=st.integers(2, 8), shards=st.integers(1, 3), seed=st.integers(0, 999))
@settings(max_examples=30, deadline=None)
def test_shards_are_a_partition_and_limit_labels(k, shards, seed):
    labels = np.repeat(np.arange(10), 60)  # 10 labels x 60
    parts = pathological_shards(labels, k, shards, np.random.default_rng(seed))
    assert _covers_exactly_once(parts, 600)
    # a shard spans at most ceil(600 / (k * shards) / 60) + 1 labels
    span = -(-600 // (k * shards) // 60) + 1
    assert all(n <= shards * span for n in _labels_held(labels, parts))


def test_two_shards_per_client_give_two_labels_when_shards_align():
    labels = np.repeat(np.arange(8), 25)  # 8 labels x 25 = 200; 4 clients x 2 shards of 25
    parts = pathological_shards(labels, 4, 2, np.random.default_rng(3))
    assert _labels_held(labels, parts) == [2, 2, 2, 2]
