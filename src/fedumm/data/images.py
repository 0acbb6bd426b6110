"""Images as the data readers hand them over: decoded and resized when read, and a reference to
where each is stored (a file, or a row of a data set), so that a model may keep the reference
and decode the image again per batch instead of holding every image in memory."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

import numpy as np


def load_image(source: Path | BinaryIO, size: int) -> np.ndarray | None:
    """An RGB uint8 (size, size, 3) array from a file or its bytes, or None if they cannot be
    decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(source) as image:
            rgb = image.convert("RGB").resize((size, size), Image.BILINEAR)
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    return np.asarray(rgb, dtype=np.uint8)


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """An RGB uint8 array resized to (size, size, 3): nearest neighbour when it grows (a
    ShapesWorld cell stays a sharp block), box averaging when it shrinks."""
    from PIL import Image

    method = Image.NEAREST if size >= image.shape[0] else Image.BOX
    return np.asarray(Image.fromarray(image).resize((size, size), method), dtype=np.uint8)


@runtime_checkable
class StoredImage(Protocol):
    """Where an image that decoded once can be decoded again, at the same size."""

    size: int

    def load(self) -> np.ndarray: ...


@dataclass(frozen=True)
class ImageFile:
    """An image file, decoded and resized to `size` on each `load`."""

    path: Path
    size: int

    def load(self) -> np.ndarray:
        image = load_image(self.path, self.size)
        if image is None:
            raise OSError(f"{self.path}: it decoded when the data was read, but not now")
        return image


# (where the image is stored, its decoded array) -> what a sample keeps of it: the built-in
# model its codes, a Hugging Face model the reference
Encode = Callable[[StoredImage, np.ndarray], object]
