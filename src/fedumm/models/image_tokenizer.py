"""A VQ image tokenizer: k-means codebook over non-overlapping RGB patches.

Each 8x8 patch of a 32x32 image becomes the index of its nearest codebook vector, so an image is
16 discrete tokens a language model can read and write. The codebook is fit with k-means++ and
Lloyd iterations on patches of the pretraining images; it lives inside the model checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch


def to_patches(images: np.ndarray, patch: int) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, H*W/patch^2, patch*patch*3) float32, row-major patch order."""
    n, h, w, c = images.shape
    if h % patch or w % patch:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {patch}")
    x = images.reshape(n, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, (h // patch) * (w // patch), patch * patch * c).astype(np.float32)


def from_patches(patches: np.ndarray, patch: int, grid: int) -> np.ndarray:
    """Inverse of `to_patches`: (N, grid*grid, patch*patch*3) -> (N, H, W, 3) uint8."""
    n = patches.shape[0]
    x = patches.reshape(n, grid, grid, patch, patch, 3).transpose(0, 1, 3, 2, 4, 5)
    return np.clip(np.rint(x.reshape(n, grid * patch, grid * patch, 3)), 0, 255).astype(np.uint8)


def fit_codebook(
    images: np.ndarray, patch: int, size: int, seed: int, iters: int = 20
) -> np.ndarray:
    """k-means codebook of at most `size` vectors (fewer if the data has fewer distinct patches)."""
    data = to_patches(images, patch).reshape(-1, patch * patch * 3)
    unique, counts = np.unique(data, axis=0, return_counts=True)
    if len(unique) <= size:
        return unique  # every distinct patch gets its own code: reconstruction is exact
    rng = np.random.default_rng(seed)
    weights = counts.astype(np.float64)
    centers = [unique[rng.choice(len(unique), p=weights / weights.sum())]]
    d2 = ((unique - centers[0]) ** 2).sum(1)
    for _ in range(size - 1):  # k-means++ seeding, weighted by patch frequency
        p = weights * d2
        centers.append(unique[rng.choice(len(unique), p=p / p.sum())])
        d2 = np.minimum(d2, ((unique - centers[-1]) ** 2).sum(1))
    c = np.stack(centers)
    for _ in range(iters):
        assign = nearest(torch.from_numpy(unique), torch.from_numpy(c)).numpy()
        for k in range(size):
            members = assign == k
            if members.any():
                c[k] = np.average(unique[members], axis=0, weights=weights[members])
    return c


def nearest(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook row for every row of `vectors` (squared L2)."""
    d = (vectors**2).sum(-1, keepdim=True) - 2 * vectors @ codebook.T + (codebook**2).sum(-1)
    return d.argmin(-1)


class PatchVQ:
    """Encode images to codes and decode codes to images with a fixed codebook."""

    def __init__(self, codebook: torch.Tensor, patch: int, grid: int):
        self.codebook = codebook.float()
        self.patch = patch
        self.grid = grid

    @property
    def size(self) -> int:
        return self.codebook.shape[0]

    @property
    def image_size(self) -> int:
        """Side in pixels of the square images it encodes."""
        return self.patch * self.grid

    @property
    def tokens_per_image(self) -> int:
        return self.grid * self.grid

    def encode(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, grid*grid) int64 codes."""
        patches = torch.from_numpy(to_patches(images, self.patch))
        flat = nearest(patches.reshape(-1, patches.shape[-1]), self.codebook)
        return flat.reshape(patches.shape[0], -1).numpy()

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """(N, grid*grid) codes -> (N, H, W, 3) uint8 images."""
        patches = self.codebook[torch.as_tensor(codes, dtype=torch.long)].numpy()
        return from_patches(patches, self.patch, self.grid)
