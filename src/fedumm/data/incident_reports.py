"""ShapesWorld incident reports: multimodal classification in the spirit of CrisisMMD.

A sample is a scene and a short message, filed under one of six humanitarian classes by two
factors, one per modality: what hazard the image shows (a red object is a fire, a blue one a
flood, neither is none) and whether the message asks for help.

    hazard \\ asks for help:   no         yes
    none                       safe       help
    fire                       fire       fire help
    flood                      flood      flood help

Either modality alone tells one factor (image 1/2, message 1/3, chance 1/6); only both tell the
class. Messages that ask for help and those that do not differ by a word or two ("help at
the ..." / "no help at the ..."), and name a thing of random colour and shape, independent
of the scene, so text never leaks the hazard. Classes are balanced (a scene is drawn until it
shows the hazard its class needs), and train and test scenes are disjoint as in every
ShapesWorld task.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedumm.data import shapesworld
from fedumm.data.modality import IMAGE, IMAGE_TEXT, TEXT

HAZARDS = {"none": None, "fire": "red", "flood": "blue"}  # hazard -> the colour that shows it
CLASSES = ("safe", "fire", "flood", "help", "fire help", "flood help")
# Short, so sequences stay short (the byte-level BPE knows few of these words).
ASKS_HELP = (
    "help at the {thing}",
    "send help to the {thing}",
    "trapped by the {thing}",
    "hurt near the {thing}",
)
NO_HELP = (
    "no help at the {thing}",
    "all fine at the {thing}",
    "not trapped by the {thing}",
    "nobody hurt near the {thing}",
)


@dataclass(frozen=True)
class ReportSample:
    image: np.ndarray  # uint8, (CANVAS, CANVAS, 3); a file reader may keep its encoding instead
    message: str
    label: str  # one of CLASSES


def label_of(hazard: str, asks_help: bool) -> str:
    return CLASSES[3 * asks_help + list(HAZARDS).index(hazard)]


def hazard_of(scene: shapesworld.Scene) -> str | None:
    """The hazard a scene shows; None if it shows more than one (not a valid report)."""
    shown = [
        h for h, color in HAZARDS.items() if color and any(o.color == color for o in scene.objects)
    ]
    return None if len(shown) > 1 else (shown[0] if shown else "none")


def message(asks_help: bool, rng: np.random.Generator) -> str:
    templates = ASKS_HELP if asks_help else NO_HELP
    color = list(shapesworld.COLORS)[int(rng.integers(len(shapesworld.COLORS)))]
    shape = shapesworld.SHAPES[int(rng.integers(len(shapesworld.SHAPES)))]
    return templates[int(rng.integers(len(templates)))].format(thing=f"{color} {shape}")


def report_dataset(n: int, split: str, seed: int) -> list[ReportSample]:
    """`n` samples of `split`, classes cycled in equal shares; deterministic in its arguments."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = np.random.default_rng([seed, 6, 0 if split == "train" else 1])
    out: list[ReportSample] = []
    while len(out) < n:
        label = CLASSES[len(out) % len(CLASSES)]
        index = CLASSES.index(label)
        hazard, asks_help = list(HAZARDS)[index % 3], index >= 3
        scene = shapesworld.sample_scene(rng)
        while scene.split() != split or hazard_of(scene) != hazard:
            scene = shapesworld.sample_scene(rng)
        out.append(ReportSample(shapesworld.render(scene), message(asks_help, rng), label))
    return out


# How a sample is put to the model. FedMLLM's baseline prompt says which modalities are there;
# its modality-agnostic prompt is one instruction whatever they are. A missing image has no
# image tokens at all; a missing message is an explicit marker. Train and test alike.
INSTRUCTIONS = {IMAGE_TEXT: "photo and text:", IMAGE: "photo:", TEXT: "text:"}
AGNOSTIC_INSTRUCTION = "report:"
NO_MESSAGE = "(none)"


def question(text: str, modality: str, agnostic: bool) -> str:
    """The question part of the understanding sequence for a sample keeping `modality`."""
    instruction = AGNOSTIC_INSTRUCTION if agnostic else INSTRUCTIONS[modality]
    return f"{instruction} {NO_MESSAGE if modality == IMAGE else text}"
