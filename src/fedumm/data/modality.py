"""Which modalities each client's samples keep: FedMLLM's four scenarios of multimodal
heterogeneity, applied on top of a label partition (the test set always keeps both).

- aligned: every sample keeps image and text.
- missing: per sample, the image is dropped with probability beta and the text with probability
  beta, independently. A sample that would lose both keeps one, chosen by a fair coin (as
  hybrid does for a client with neither), so no sample is empty: each modality is then missing
  from a share beta - beta^2 / 2 of the samples.
- cross: k clients hold only images, the rest only text (which ones is drawn by the seed).
- hybrid: each client draws an [image, text] presence vector ~ Bernoulli(p); a client that draws
  neither flips a fair coin per sample between image and text.

Each function takes the clients' sizes and a seeded generator and returns, per client, one
modality code per sample (IMAGE_TEXT, IMAGE or TEXT).
"""

from __future__ import annotations

import numpy as np

IMAGE_TEXT, IMAGE, TEXT = "image+text", "image", "text"
MODALITIES = (IMAGE_TEXT, IMAGE, TEXT)
SCENARIOS = ("aligned", "missing", "cross", "hybrid")


def _check_probability(name: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _codes(has_image: np.ndarray, has_text: np.ndarray) -> np.ndarray:
    return np.where(has_image & has_text, IMAGE_TEXT, np.where(has_image, IMAGE, TEXT))


def aligned(sizes: list[int]) -> list[np.ndarray]:
    return [np.full(n, IMAGE_TEXT) for n in sizes]


def missing_modality(sizes: list[int], beta: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Image and text each dropped per sample with probability `beta`; never both."""
    _check_probability("beta (the drop probability)", beta)
    out = []
    for n in sizes:
        has_image, has_text = rng.random(n) >= beta, rng.random(n) >= beta
        neither = ~has_image & ~has_text
        keep_image = rng.random(n) < 0.5
        has_image |= neither & keep_image
        has_text |= neither & ~keep_image
        out.append(_codes(has_image, has_text))
    return out


def cross_modality(
    sizes: list[int], image_clients: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """`image_clients` clients image-only, the others text-only."""
    if not 0 <= image_clients <= len(sizes):
        raise ValueError(
            f"image_only_clients ({image_clients}) must be between 0 and the number of "
            f"clients ({len(sizes)})"
        )
    image_only = set(rng.permutation(len(sizes))[:image_clients].tolist())
    return [np.full(n, IMAGE if i in image_only else TEXT) for i, n in enumerate(sizes)]


def hybrid_modality(sizes: list[int], p: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Per client, image and text each present with probability `p`; neither -> per-sample coin."""
    _check_probability("p (the presence probability)", p)
    out = []
    for n in sizes:
        has_image, has_text = rng.random(2) < p
        if has_image or has_text:
            out.append(_codes(np.full(n, has_image), np.full(n, has_text)))
        else:
            coin = rng.random(n) < 0.5
            out.append(_codes(coin, ~coin))
    return out


def assign_modalities(
    scenario: str,
    sizes: list[int],
    rng: np.random.Generator,
    beta: float = 0.3,
    image_clients: int = 0,
    p: float = 0.8,
) -> list[np.ndarray]:
    """The modality code of every sample of every client under `scenario`."""
    if scenario == "aligned":
        return aligned(sizes)
    if scenario == "missing":
        return missing_modality(sizes, beta, rng)
    if scenario == "cross":
        return cross_modality(sizes, image_clients, rng)
    if scenario == "hybrid":
        return hybrid_modality(sizes, p, rng)
    raise ValueError(f"unknown modality scenario {scenario!r}; known: {', '.join(SCENARIOS)}")


def modality_counts(codes: np.ndarray) -> dict[str, int]:
    """How many samples keep each modality combination (every code listed, zeros included)."""
    return {m: int(np.sum(codes == m)) for m in MODALITIES}
