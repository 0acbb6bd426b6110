"""ShapesWorld: a seeded, procedural multimodal world small enough for a laptop CPU.

A scene is 1-4 coloured shapes placed in the cells of a 4x4 grid on a 32x32 RGB canvas; each object
is drawn 6 px wide at a random 0-1 px offset inside its 8 px cell, so one scene has many pixel
renderings, and questions about counts, relations and attributes need several cells, never one
pixel. From one scene we derive VQA pairs (six question families), dense captions, which are
both the captioning targets and the text-to-image prompts of pretraining, and short object
lists, which a pretraining config can mix into those prompts (`mixed_captions`).

Train and test scenes are disjoint by construction: a scene's split is a hash of its content (which
object in which cell), not of the seed, so no test scene can ever appear in training.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import numpy as np

from fedumm.config import FAMILIES, check_families

GRID = 4
CELL = 8
CANVAS = GRID * CELL
SHAPE_SIZE = 6
MAX_OFFSET = 1  # sub-cell jitter in pixels, per axis: 0..MAX_OFFSET

SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "orange": (240, 130, 20),
}
BACKGROUND = (235, 235, 235)
MAX_OBJECTS = 4
RELATIONS = ("left", "right", "above", "below")
TEST_BUCKET_PERCENT = 15  # share of all possible scenes reserved for the test split


@dataclass(frozen=True)
class Obj:
    """One object: its shape, colour, grid cell (row, col) and pixel offset inside the cell."""

    shape: str
    color: str
    row: int
    col: int
    dy: int = 0
    dx: int = 0

    def phrase(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]

    def key(self) -> str:
        """Content identity of the scene (ignores pixel jitter): what train/test are disjoint on."""
        cells = sorted((o.row, o.col, o.shape, o.color) for o in self.objects)
        return ";".join(f"{r}{c}{s}{k}" for r, c, s, k in cells)

    def split(self) -> str:
        digest = hashlib.sha1(self.key().encode()).digest()
        return "test" if digest[0] * 100 // 256 < TEST_BUCKET_PERCENT else "train"

    def reading_order(self) -> list[Obj]:
        return sorted(self.objects, key=lambda o: (o.row, o.col))


@dataclass(frozen=True)
class VQASample:
    """An image, a question about it and its short answer; `family` says which kind of question."""

    image: np.ndarray  # uint8, (CANVAS, CANVAS, 3)
    question: str
    answer: str
    family: str


@dataclass(frozen=True)
class CaptionSample:
    """An image and a caption naming every object in reading order (the pretraining format)."""

    image: np.ndarray
    caption: str


# --------------------------------------------------------------------------- sampling and drawing


def sample_scene(rng: np.random.Generator, max_objects: int = MAX_OBJECTS) -> Scene:
    n = int(rng.integers(1, max_objects + 1))
    cells = rng.choice(GRID * GRID, size=n, replace=False)
    objects = tuple(
        Obj(
            shape=SHAPES[int(rng.integers(len(SHAPES)))],
            color=list(COLORS)[int(rng.integers(len(COLORS)))],
            row=int(cell) // GRID,
            col=int(cell) % GRID,
            dy=int(rng.integers(MAX_OFFSET + 1)),
            dx=int(rng.integers(MAX_OFFSET + 1)),
        )
        for cell in cells
    )
    return Scene(objects)


def _shape_masks() -> dict[str, np.ndarray]:
    yy, xx = np.mgrid[0:SHAPE_SIZE, 0:SHAPE_SIZE] + 0.5
    c = SHAPE_SIZE / 2
    circle = (yy - c) ** 2 + (xx - c) ** 2 <= (SHAPE_SIZE / 2) ** 2
    square = np.ones((SHAPE_SIZE, SHAPE_SIZE), dtype=bool)
    triangle = np.abs(xx - c) <= yy / 2  # apex at the top, base at the bottom
    return {"circle": circle, "square": square, "triangle": triangle}


SHAPE_MASKS = _shape_masks()


def render(scene: Scene) -> np.ndarray:
    """Draw a scene as a uint8 (32, 32, 3) RGB image."""
    image = np.empty((CANVAS, CANVAS, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    for o in scene.objects:
        y0 = o.row * CELL + o.dy
        x0 = o.col * CELL + o.dx
        window = image[y0 : y0 + SHAPE_SIZE, x0 : x0 + SHAPE_SIZE]
        window[SHAPE_MASKS[o.shape]] = COLORS[o.color]
    return image


# --------------------------------------------------------------------------- language


def relation(a: Obj, b: Obj) -> str | None:
    """Where `a` is relative to `b` along the dominant axis; None when the axes tie."""
    dr, dc = a.row - b.row, a.col - b.col
    if abs(dc) == abs(dr):
        return None
    if abs(dc) > abs(dr):
        return "left" if dc < 0 else "right"
    return "above" if dr < 0 else "below"


_RELATION_PHRASE = {"left": "left of", "right": "right of", "above": "above", "below": "below"}


def caption(scene: Scene) -> str:
    """A dense caption: every object in reading order, how many there are, and one relation.

    e.g. 'a red circle, a blue square and a green triangle. 3 objects. the red circle is left of
    the blue square.' Dense captions are how real foundation models learn to perceive counts and
    layout; they also give every answer word except yes/no a trained output row.
    """
    ordered = scene.reading_order()
    names = [f"a {o.phrase()}" for o in ordered]
    listing = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    count = f"{len(ordered)} object{'s' if len(ordered) > 1 else ''}"
    text = f"{listing}. {count}."
    for a, b in zip(ordered, ordered[1:]):
        rel = relation(a, b)
        if rel is not None:
            return f"{text} the {a.phrase()} is {_RELATION_PHRASE[rel]} the {b.phrase()}."
    return text


_COUNT_WORDS = {1: "a", 2: "two", 3: "three", 4: "four"}


def short_caption(scene: Scene, with_colors: bool) -> str:
    """A short object list, as people caption a photo: 'two red circles and a blue square.', or
    without colours 'three circles and a square.' Objects are grouped by what the caption names,
    in reading order of each group's first object; no count of all objects, no layout."""
    groups: dict[str, int] = {}
    for o in scene.reading_order():
        name = o.phrase() if with_colors else o.shape
        groups[name] = groups.get(name, 0) + 1
    names = [
        f"{_COUNT_WORDS.get(k, str(k))} {name}{'s' if k > 1 else ''}" for name, k in groups.items()
    ]
    listing = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"{listing}."


def _unique(scene: Scene, **attrs: str) -> Obj | None:
    hits = [o for o in scene.objects if all(getattr(o, k) == v for k, v in attrs.items())]
    return hits[0] if len(hits) == 1 else None


def _random_phrase(rng: np.random.Generator) -> tuple[str, str]:
    return list(COLORS)[int(rng.integers(len(COLORS)))], SHAPES[int(rng.integers(len(SHAPES)))]


def make_question(scene: Scene, family: str, rng: np.random.Generator) -> tuple[str, str] | None:
    """One (question, answer) of `family` about `scene`, or None if the scene cannot support it."""
    objs = list(scene.objects)
    if family == "existence":
        if rng.random() < 0.5:
            o = objs[int(rng.integers(len(objs)))]
            return f"is there a {o.phrase()}?", "yes"
        for _ in range(20):
            color, shape = _random_phrase(rng)
            if not any(o.color == color and o.shape == shape for o in objs):
                return f"is there a {color} {shape}?", "no"
        return None
    if family == "color":
        candidates = [o for o in objs if _unique(scene, shape=o.shape)]
        if not candidates:
            return None
        o = candidates[int(rng.integers(len(candidates)))]
        return f"what color is the {o.shape}?", o.color
    if family == "shape":
        candidates = [o for o in objs if _unique(scene, color=o.color)]
        if not candidates:
            return None
        o = candidates[int(rng.integers(len(candidates)))]
        return f"what shape is the {o.color} object?", o.shape
    if family == "count":
        kind = int(rng.integers(3))
        if kind == 0:
            return "how many objects are there?", str(len(objs))
        if kind == 1:
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            return f"how many {shape}s are there?", str(sum(o.shape == shape for o in objs))
        color = list(COLORS)[int(rng.integers(len(COLORS)))]
        return f"how many {color} objects are there?", str(sum(o.color == color for o in objs))
    if family == "spatial":
        pairs = [
            (a, b)
            for a in objs
            for b in objs
            if a is not b
            and relation(a, b)
            and _unique(scene, shape=a.shape, color=a.color)
            and _unique(scene, shape=b.shape, color=b.color)
        ]
        if not pairs:
            return None
        a, b = pairs[int(rng.integers(len(pairs)))]
        return f"where is the {a.phrase()} relative to the {b.phrase()}?", relation(a, b)
    if family == "yesno":
        candidates = [o for o in objs if _unique(scene, shape=o.shape)]
        if not candidates:
            return None
        o = candidates[int(rng.integers(len(candidates)))]
        if rng.random() < 0.5:
            return f"is the {o.shape} {o.color}?", "yes"
        other = [c for c in COLORS if c != o.color][int(rng.integers(len(COLORS) - 1))]
        return f"is the {o.shape} {other}?", "no"
    raise ValueError(f"unknown question family {family!r}; known: {', '.join(FAMILIES)}")


# --------------------------------------------------------------------------- data sets


def _scenes(seed: int, split: str, n: int, stream: int) -> list[Scene]:
    """`n` scenes of `split`, drawn from an RNG stream independent of every other use of `seed`."""
    rng = np.random.default_rng([seed, stream, 0 if split == "train" else 1])
    out: list[Scene] = []
    while len(out) < n:
        scene = sample_scene(rng)
        if scene.split() == split:
            out.append(scene)
    return out


def vqa_dataset(
    n: int, split: str, seed: int, families: tuple[str, ...] = FAMILIES
) -> list[VQASample]:
    """`n` VQA samples with families in equal shares; deterministic in (`n`, `split`, `seed`)."""
    return _questions(n, split, seed, families, streams=(1, 2))


def pretraining_questions(
    n: int, split: str, seed: int, families: tuple[str, ...]
) -> list[VQASample]:
    """`n` question-answer pairs of `families` for pretraining a foundation as an assistant,
    drawn from scenes independent of `vqa_dataset`'s (the downstream clients' data)."""
    return _questions(n, split, seed, families, streams=(8, 9))


def _questions(
    n: int, split: str, seed: int, families: tuple[str, ...], streams: tuple[int, int]
) -> list[VQASample]:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    check_families(families)
    rng = np.random.default_rng([seed, streams[0], 0 if split == "train" else 1])
    scene_iter = iter(_scenes(seed, split, 4 * n + 64, stream=streams[1]))
    out: list[VQASample] = []
    while len(out) < n:
        scene = next(scene_iter)
        family = families[len(out) % len(families)]
        qa = make_question(scene, family, rng)
        if qa is not None:
            out.append(VQASample(render(scene), qa[0], qa[1], family))
    return out


def caption_scenes(n: int, split: str, seed: int) -> list[Scene]:
    """The `n` scenes of `caption_dataset`."""
    return _scenes(seed, split, n, stream=3)


def caption_dataset(n: int, split: str, seed: int) -> list[CaptionSample]:
    """`n` image-caption pairs: the pretraining distribution (no questions, no prompt templates)."""
    return [CaptionSample(render(s), caption(s)) for s in caption_scenes(n, split, seed)]


def mixed_captions(scenes: list[Scene], short_share: float, seed: int, split: str) -> list[str]:
    """A caption per scene: dense, or for a `short_share` of them drawn by `seed`, short
    (`short_caption`, with or without colours in equal shares)."""
    rng = np.random.default_rng([seed, 10, 0 if split == "train" else 1])
    out = []
    for s in scenes:
        short, with_colors = rng.random() < short_share, rng.random() < 0.5
        out.append(short_caption(s, with_colors) if short else caption(s))
    return out


def altered(scene: Scene, rng: np.random.Generator) -> Scene:
    """`scene` with one object's colour or shape changed: its caption is false of `scene`."""
    i = int(rng.integers(len(scene.objects)))
    o = scene.objects[i]
    if rng.random() < 0.5:
        colors = [c for c in COLORS if c != o.color]
        new = replace(o, color=colors[int(rng.integers(len(colors)))])
    else:
        shapes = [s for s in SHAPES if s != o.shape]
        new = replace(o, shape=shapes[int(rng.integers(len(shapes)))])
    return Scene(scene.objects[:i] + (new,) + scene.objects[i + 1 :])


def caption_matching_dataset(n: int, split: str, seed: int) -> list[VQASample]:
    """`n` image-text matching pairs, as in BLIP's ITM objective: the image with its own caption
    ('yes') or with the caption of the scene with one attribute altered ('no'), in equal shares.
    The caption stands where a question would; no question template is ever shown."""
    rng = np.random.default_rng([seed, 6, 0 if split == "train" else 1])
    out = []
    for k, scene in enumerate(_scenes(seed, split, n, stream=7)):
        match = k % 2 == 0
        text = caption(scene if match else altered(scene, rng))
        out.append(VQASample(render(scene), text, "yes" if match else "no", "caption_matching"))
    return out


def text_corpus(seed: int, n: int = 3000) -> list[str]:
    """Text the byte-level BPE tokenizer is trained on: every word ShapesWorld uses, in context."""
    rng = np.random.default_rng([seed, 4])
    texts: list[str] = []
    for scene in _scenes(seed, "train", n, stream=5):
        texts.append(caption(scene))
        family = FAMILIES[int(rng.integers(len(FAMILIES)))]
        qa = make_question(scene, family, rng)
        if qa is not None:
            texts.extend(qa)
    texts += [str(i) for i in range(10)] + ["a photo of"]
    return texts
