"""Split a data set over clients: IID, or Dirichlet label skew (Hsu et al., 2019).

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


def label_histogram(labels: list | np.ndarray, parts: list[np.ndarray]) -> list[dict[str, int]]:
    """Per client, how many samples of each label it holds."""
    labels = np.asarray(labels)
    out = []
    for part in parts:
        values, counts = np.unique(labels[part], return_counts=True)
        out.append({str(v): int(c) for v, c in zip(values, counts)})
    return out
