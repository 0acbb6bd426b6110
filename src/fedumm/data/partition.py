"""Split a data set over clients: IID, Dirichlet label skew (Hsu et al., 2019), quantity skew
(client sizes from a Dirichlet or a power law, labels IID) and pathological shards (McMahan et
al., 2017: each client gets a few label-sorted shards, so only a few labels).

Each function takes labels (or a size) and a seeded generator and returns one index array per
client (the Dirichlet split also says whether it had to repair a draw); they never look at the
samples, so any data set with a label column can be partitioned. Everything is vectorized over
clients: 100,000 clients split in seconds. `split` picks one by a run's `partition` config.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedumm.config import PartitionConfig

WORK_BUDGET = 20_000_000  # client-label cells the Dirichlet split may draw before repairing


def iid(n: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A random permutation cut into `num_clients` near-equal parts."""
    if num_clients > n:
        raise ValueError(f"cannot split {n} samples over {num_clients} clients")
    return [np.sort(part) for part in np.array_split(rng.permutation(n), num_clients)]


def split(
    cfg: PartitionConfig, labels: list | np.ndarray, num_clients: int, rng: np.random.Generator
) -> tuple[list[np.ndarray], dict]:
    """`labels`' pool split over `num_clients` by the configured scheme, and what the split had
    to repair to give every client `min_samples` (Dirichlet only; else empty)."""
    if cfg.scheme == "iid":
        return iid(len(labels), num_clients, rng), {}
    if cfg.scheme == "quantity":
        sizes = quantity_skew(
            len(labels),
            num_clients,
            rng,
            cfg.quantity_law,
            cfg.alpha,
            cfg.power_exponent,
            cfg.min_samples,
        )
        return sizes, {}
    if cfg.scheme == "shards":
        return pathological_shards(labels, num_clients, cfg.shards_per_client, rng), {}
    return dirichlet_label_skew(labels, num_clients, cfg.alpha, rng, cfg.min_samples)


def dirichlet_label_skew(
    labels: list | np.ndarray,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    min_samples: int = 1,
    max_tries: int = 1000,
) -> tuple[list[np.ndarray], dict]:
    """For every label, split its samples over clients in proportions ~ Dirichlet(alpha).

    Small alpha gives each client a few dominant labels. As in NIID-Bench, a client that already
    holds its fair share (n / num_clients) gets no more of later labels, which keeps sizes sane.
    Draws repeat until every client has `min_samples`, within a work budget (about 2e7
    client-label cells, so up to `max_tries` draws for a few clients and a few for 100,000);
    then the draw closest to it is repaired by moving random samples from the largest clients
    to those short of `min_samples` (Dirichlet draws at cross-device scale are nearly never
    complete). Returns the parts and what it took: {"draws", "repaired_clients",
    "moved_samples"}.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    labels = np.asarray(labels)
    n = len(labels)
    if num_clients * min_samples > n:
        raise ValueError(
            f"{n} samples cannot give {num_clients} clients at least {min_samples} each"
        )
    classes = np.unique(labels)
    by_class = [np.flatnonzero(labels == c) for c in classes]
    tries = max(1, min(max_tries, WORK_BUDGET // (num_clients * len(classes))))
    best, best_missing, draws = None, None, 0
    while draws < tries and best_missing != 0:
        owner, sizes = _dirichlet_draw(by_class, n, num_clients, alpha, rng)
        draws += 1
        missing = int(np.maximum(min_samples - sizes, 0).sum())
        if best_missing is None or missing < best_missing:
            best, best_missing = (owner, sizes), missing
    owner, sizes = best
    repaired = int((sizes < min_samples).sum())
    if repaired:
        _repair(owner, sizes, min_samples, rng)
    note = {"draws": draws, "repaired_clients": repaired, "moved_samples": best_missing}
    return _parts(owner, num_clients), note


def _dirichlet_draw(by_class, n, num_clients, alpha, rng) -> tuple[np.ndarray, np.ndarray]:
    """One draw: each sample's client and each client's size."""
    owner = np.empty(n, dtype=np.int64)
    sizes = np.zeros(num_clients, dtype=np.int64)
    for idx in by_class:
        idx = rng.permutation(idx)
        p = rng.dirichlet(np.full(num_clients, alpha))
        uncapped = sizes < n / num_clients
        p = p * uncapped
        # a draw whose weight all falls on clients already at their share (tiny alpha): the
        # label is spread evenly over the others instead of dividing by zero
        p = p / p.sum() if p.sum() > 0 else uncapped / uncapped.sum()
        cuts = np.clip((np.cumsum(p) * len(idx)).astype(int)[:-1], 0, len(idx))
        counts = np.diff(cuts, prepend=0, append=len(idx))
        owner[idx] = np.repeat(np.arange(num_clients), counts)
        sizes += counts
    return owner, sizes


def _repair(owner: np.ndarray, sizes: np.ndarray, min_samples: int, rng) -> None:
    """Move random samples from the largest clients to those short of `min_samples`, in place:
    the donors are cut down to a common level, as little as the shortfall needs."""
    short = np.flatnonzero(sizes < min_samples)
    need = min_samples - sizes[short]
    total = int(need.sum())
    low, high = min_samples, int(sizes.max())  # the highest level whose excess covers it
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if np.maximum(sizes - mid, 0).sum() >= total else (low, mid - 1)
    give = np.maximum(sizes - low, 0)
    over = int(give.sum()) - total  # fewer than the donors above the level: one less each
    give[np.flatnonzero(give)[:over]] -= 1
    order = np.lexsort((rng.random(len(owner)), owner))  # per client, in random order
    starts = np.cumsum(sizes) - sizes
    rank = np.arange(len(owner)) - starts[owner[order]]
    moved = rng.permutation(order[rank < give[owner[order]]])
    owner[moved] = np.repeat(short, need)
    sizes -= give
    sizes[short] = min_samples


def _parts(owner: np.ndarray, num_clients: int) -> list[np.ndarray]:
    """Each client's sample indices, ascending, from each sample's client."""
    order = np.argsort(owner, kind="stable")
    return np.split(order, np.cumsum(np.bincount(owner, minlength=num_clients))[:-1])


def quantity_skew(
    n: int,
    num_clients: int,
    rng: np.random.Generator,
    law: str = "dirichlet",
    alpha: float = 0.5,
    exponent: float = 1.5,
    min_samples: int = 1,
) -> list[np.ndarray]:
    """IID samples, skewed sizes: shares ~ Dirichlet(alpha), or a power law
    (k-th largest share proportional to k^-exponent, ranks shuffled over clients). Every client
    gets `min_samples` first; the rest is split by the shares."""
    if num_clients * min_samples > n:
        raise ValueError(
            f"{n} samples cannot give {num_clients} clients at least {min_samples} each"
        )
    if law == "dirichlet":
        shares = rng.dirichlet(np.full(num_clients, alpha))
    elif law == "power":
        shares = rng.permutation(np.arange(1, num_clients + 1, dtype=float) ** -exponent)
        shares = shares / shares.sum()
    else:
        raise ValueError(f"unknown quantity law {law!r}; known: dirichlet, power")
    rest = n - num_clients * min_samples
    sizes = min_samples + np.floor(shares * rest).astype(int)
    sizes[np.argsort(-shares)[: n - sizes.sum()]] += 1  # the rounding remainder, largest first
    cuts = np.cumsum(sizes)[:-1]
    return [np.sort(part) for part in np.split(rng.permutation(n), cuts)]


def pathological_shards(
    labels: list | np.ndarray, num_clients: int, shards_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Sort by label, cut into num_clients * shards_per_client equal shards, and deal each client
    `shards_per_client` of them at random: a client sees about that many labels."""
    labels = np.asarray(labels)
    total = num_clients * shards_per_client
    if total > len(labels):
        raise ValueError(f"{len(labels)} samples cannot make {total} shards")
    order = np.argsort(labels, kind="stable")
    shards = np.array_split(order, total)
    dealt = rng.permutation(total).reshape(num_clients, shards_per_client)
    return [np.sort(np.concatenate([shards[s] for s in row])) for row in dealt]


@dataclass
class LabelCounts:
    """How many samples of each label each client holds, as (client, label, count) triplets of
    the cells that are not zero: memory grows with the data, not with clients x labels (100,000
    clients and a VQA v2 answer vocabulary would be gigabytes as a matrix)."""

    labels: list[str]  # sorted, as strings
    num_clients: int
    client: np.ndarray
    label: np.ndarray  # index into `labels`
    count: np.ndarray

    def sizes(self) -> np.ndarray:
        """Each client's number of samples."""
        return np.bincount(self.client, self.count, self.num_clients).astype(np.int64)

    def distinct(self) -> np.ndarray:
        """How many labels each client holds."""
        return np.bincount(self.client, minlength=self.num_clients)

    def entropy(self) -> np.ndarray:
        """Each client's label entropy in bits (nan for a client without samples)."""
        sizes = self.sizes()
        p = self.count / sizes[self.client]
        bits = np.bincount(self.client, -p * np.log2(p), self.num_clients)
        return np.where(sizes > 0, bits, np.nan)

    def rows(self, clients: list[int]) -> np.ndarray:
        """The clients x labels matrix of `clients` only."""
        out = np.zeros((len(clients), len(self.labels)), dtype=np.int64)
        where = {c: j for j, c in enumerate(clients)}
        for t in np.flatnonzero(np.isin(self.client, clients)):
            out[where[self.client[t]], self.label[t]] = self.count[t]
        return out


def label_counts(labels: list | np.ndarray, parts: list[np.ndarray]) -> LabelCounts:
    """Per client and label, how many samples; one pass over the data."""
    labels = np.asarray(labels)
    classes, codes = np.unique(labels, return_inverse=True)
    sizes = np.array([len(p) for p in parts], dtype=np.int64)
    owner = np.repeat(np.arange(len(parts)), sizes)
    flat = np.concatenate(parts).astype(np.int64) if len(parts) else np.array([], dtype=np.int64)
    cells, count = np.unique(owner * len(classes) + codes[flat], return_counts=True)
    return LabelCounts(
        [str(c) for c in classes],
        len(parts),
        cells // len(classes),
        cells % len(classes),
        count.astype(np.int64),
    )
