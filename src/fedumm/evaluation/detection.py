"""What a GenEval detector is: a callable from an image to the objects in it, and the classes and
colours it can tell (a prompt naming others is refused before any training)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fedumm.data.geneval import GenEvalPrompt


@dataclass(frozen=True)
class Detection:
    """One object found in an image: class, colour name (None if unknown), box (x0, y0, x1, y1),
    and the detector's confidence."""

    cls: str
    color: str | None
    box: tuple[float, float, float, float]
    score: float = 1.0


class Detector(Protocol):
    """Image (H, W, 3) uint8 -> the objects in it. `classes` and `colors`: what it can tell
    (a prompt naming others is refused before training)."""

    classes: frozenset[str]
    colors: frozenset[str]

    def __call__(self, image: np.ndarray) -> list[Detection]: ...


def check_covered(prompts: list[GenEvalPrompt], detector: Detector, name: str) -> None:
    """Refuse prompts naming a class or colour the detector cannot tell, naming them all."""
    classes = {item["class"] for p in prompts for item in p.include + p.exclude}
    colors = {item["color"] for p in prompts for item in p.include if "color" in item}
    missing_classes = sorted(classes - detector.classes)
    missing_colors = sorted(colors - detector.colors)
    if missing_classes or missing_colors:
        raise ValueError(
            f"eval.detector {name!r} cannot tell what the prompts name: missing classes "
            f"{missing_classes or 'none'}, missing colors {missing_colors or 'none'} (it knows "
            f"{len(detector.classes)} classes and the colors {sorted(detector.colors)})"
        )
