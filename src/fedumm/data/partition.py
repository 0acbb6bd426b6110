"""Split a data set over clients: IID, Dirichlet label skew (Hsu et al., 2019), quantity skew
(client sizes from a Dirichlet or a power law, labels IID) and pathological shards (McMahan et
al., 2017: each client gets a few label-sorted shards, so only a few labels).

Each function takes labels (or a size) and a seeded generator and returns one index array per
client; they never look at the samples, so any data set with a label column can be partitioned.
"""

from __future__ import annotations

import numpy as np


def iid(n: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A random permutation cut into `num_clients` near-equal parts."""
    if num_clients > n:
        raise ValueError(f"cannot split {n} samples over {num_clients} clients")
    return [np.sort(part) for part in np.array_split(rng.permutation(n), num_clients)]


def dirichlet_label_skew(
    labels: list | np.ndarray,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    min_samples: int = 1,
    max_tries: int = 1000,
) -> list[np.ndarray]:
    """For every label, split its samples over clients in proportions ~ Dirichlet(alpha).

    Small alpha gives each client a few dominant labels. As in NIID-Bench, a client that already
    holds its fair share (n / num_clients) gets no more of later labels, which keeps sizes sane;
    draws repeat until every client has `min_samples`.
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
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for idx in by_class:
            idx = rng.permutation(idx)
            p = rng.dirichlet(np.full(num_clients, alpha))
            p = p * np.array([len(part) < n / num_clients for part in parts])
            p = p / p.sum()
            cuts = (np.cumsum(p) * len(idx)).astype(int)[:-1]
            for part, chunk in zip(parts, np.split(idx, cuts)):
                part.extend(chunk.tolist())
        if min(len(part) for part in parts) >= min_samples:
            return [np.sort(np.array(part, dtype=int)) for part in parts]
    raise ValueError(
        f"no Dirichlet(alpha={alpha}) split gave every one of {num_clients} clients "
        f"{min_samples} samples in {max_tries} draws; raise alpha or lower min_samples"
    )


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


def label_histogram(labels: list | np.ndarray, parts: list[np.ndarray]) -> list[dict[str, int]]:
    """Per client, how many samples of each label it holds."""
    labels = np.asarray(labels)
    out = []
    for part in parts:
        values, counts = np.unique(labels[part], return_counts=True)
        out.append({str(v): int(c) for v, c in zip(values, counts)})
    return out
