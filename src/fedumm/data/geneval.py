"""GenEval-style compositional text-to-image prompts on ShapesWorld, in GenEval's own format.

GenEval (Ghosh et al., NeurIPS 2023) scores a text-to-image model on six tags: single_object,
two_object, counting, colors, position, color_attr. Its prompt file holds one JSON object per line,
e.g.

    {"tag": "position", "include": [{"class": "circle", "count": 1},
     {"class": "square", "count": 1, "position": ["right of", 0]}],
     "prompt": "a photo of a square right of a circle"}

`include` lists what must be in the image (class, count, optional color, optional position relative
to an earlier include entry); `exclude` what must not (counting: {"class": c, "count": n + 1} means
"fewer than n + 1"). Our prompts use GenEval's templates with ShapesWorld's classes (its shapes) and
colours, so `read_metadata` reads the official `evaluation_metadata.jsonl` too; `check_drawable`
says which prompts the ShapesWorld scorer can judge.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedumm.data import shapesworld as sw

TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
POSITIONS = ("left of", "right of", "above", "below")
COUNT_WORDS = {2: "two", 3: "three", 4: "four"}
_SHAPESWORLD_RELATION = {"left of": "left", "right of": "right", "above": "above", "below": "below"}


class MetadataError(ValueError):
    """A GenEval metadata line that cannot be used; the message names the file and line."""


@dataclass
class GenEvalPrompt:
    """One line of GenEval metadata."""

    tag: str
    prompt: str
    include: list[dict]
    exclude: list[dict] = field(default_factory=list)
    source: str = field(default="", compare=False, repr=False)  # "file:line", for messages

    def to_json(self) -> dict:
        out = {"tag": self.tag, "include": self.include}
        if self.exclude:
            out["exclude"] = self.exclude
        out["prompt"] = self.prompt
        return out

    @property
    def label(self) -> str:
        """The class of the first object: what a Dirichlet skew over 'class' is over."""
        return self.include[0]["class"]


@dataclass
class GenerationSample:
    """A prompt and an image that satisfies it."""

    image: np.ndarray
    prompt: GenEvalPrompt


# --------------------------------------------------------------------------- the prompt space


def _a(cls: str) -> str:
    return f"a {cls}"


def all_prompts(tag: str) -> list[GenEvalPrompt]:
    """Every prompt of `tag` GenEval's templates give over ShapesWorld's classes and colours."""
    shapes, colors = sw.SHAPES, list(sw.COLORS)
    pairs = list(itertools.permutations(shapes, 2))
    if tag == "single_object":
        return [
            GenEvalPrompt(tag, f"a photo of {_a(s)}", [{"class": s, "count": 1}]) for s in shapes
        ]
    if tag == "two_object":
        return [
            GenEvalPrompt(
                tag,
                f"a photo of {_a(a)} and {_a(b)}",
                [{"class": a, "count": 1}, {"class": b, "count": 1}],
            )
            for a, b in pairs
        ]
    if tag == "counting":
        return [
            GenEvalPrompt(
                tag,
                f"a photo of {word} {s}s",
                [{"class": s, "count": n}],
                [{"class": s, "count": n + 1}],
            )
            for s in shapes
            for n, word in COUNT_WORDS.items()
        ]
    if tag == "colors":
        return [
            GenEvalPrompt(tag, f"a photo of a {c} {s}", [{"class": s, "count": 1, "color": c}])
            for s in shapes
            for c in colors
        ]
    if tag == "position":
        return [
            GenEvalPrompt(
                tag,
                f"a photo of {_a(b)} {rel} {_a(a)}",
                [{"class": a, "count": 1}, {"class": b, "count": 1, "position": [rel, 0]}],
            )
            for a, b in pairs
            for rel in POSITIONS
        ]
    if tag == "color_attr":
        return [
            GenEvalPrompt(
                tag,
                f"a photo of a {ca} {a} and a {cb} {b}",
                [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}],
            )
            for a, b in pairs
            for ca in colors
            for cb in colors
        ]
    raise ValueError(f"unknown GenEval tag {tag!r}; known: {', '.join(TAGS)}")


def evaluation_prompts(per_tag: int, seed: int) -> list[GenEvalPrompt]:
    """A fixed evaluation set: up to `per_tag` distinct prompts of each tag, drawn by `seed`."""
    rng = np.random.default_rng([seed, 0x6E7])
    out: list[GenEvalPrompt] = []
    for tag in TAGS:
        space = all_prompts(tag)
        picked = rng.choice(len(space), size=min(per_tag, len(space)), replace=False)
        out.extend(space[i] for i in sorted(picked))
    return out


# --------------------------------------------------------------------------- scenes for a prompt


def scene_for(prompt: GenEvalPrompt, rng: np.random.Generator) -> sw.Scene:
    """A ShapesWorld scene with exactly the objects `prompt` includes, placed so that every
    position it asks for holds along the dominant axis (ShapesWorld's own notion of 'left of');
    unspecified colours are random."""
    check_drawable([prompt])
    wanted = [(item, k) for item in prompt.include for k in range(item["count"])]
    colors = list(sw.COLORS)
    for _ in range(1000):
        cells = rng.choice(sw.GRID * sw.GRID, size=len(wanted), replace=False)
        objects = [
            sw.Obj(
                item["class"],
                item.get("color") or colors[int(rng.integers(len(colors)))],
                int(c) // sw.GRID,
                int(c) % sw.GRID,
                int(rng.integers(sw.MAX_OFFSET + 1)),
                int(rng.integers(sw.MAX_OFFSET + 1)),
            )
            for (item, _), c in zip(wanted, cells)
        ]
        groups = [
            [o for (it, _), o in zip(wanted, objects) if it is item] for item in prompt.include
        ]
        if all(
            sw.relation(a, b) == _SHAPESWORLD_RELATION[item["position"][0]]
            for item, group in zip(prompt.include, groups)
            if "position" in item
            for a in group
            for b in groups[item["position"][1]]
        ):
            return sw.Scene(tuple(objects))
    raise ValueError(f"no placement on a {sw.GRID}x{sw.GRID} grid satisfies {prompt.prompt!r}")


def generation_dataset(n: int, seed: int) -> list[GenerationSample]:
    """`n` prompt-image pairs, tags in equal shares, prompts uniform within each tag's space.

    The images are fresh seeded renderings; the prompts come from the same space as the
    evaluation prompts, as GenEval's do from COCO's classes: the test asks whether the model draws
    what a prompt says, in pixels it has never been shown for that prompt."""
    rng = np.random.default_rng([seed, 0x6E6])
    spaces = {tag: all_prompts(tag) for tag in TAGS}
    out = []
    for i in range(n):
        space = spaces[TAGS[i % len(TAGS)]]
        prompt = space[int(rng.integers(len(space)))]
        out.append(GenerationSample(sw.render(scene_for(prompt, rng)), prompt))
    return out


# --------------------------------------------------------------------------- reading and writing


def write_metadata(prompts: list[GenEvalPrompt], path: Path) -> None:
    Path(path).write_text("".join(json.dumps(p.to_json()) + "\n" for p in prompts))


def read_metadata(path: str | Path) -> list[GenEvalPrompt]:
    """Parse a GenEval metadata JSONL file (ours or the official one), checking every line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GenEval metadata file not found: {path}")
    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as err:
            raise MetadataError(f"{where}: not valid JSON ({err.msg})") from None
        prompts.append(_parse(raw, where))
    if not prompts:
        raise MetadataError(f"{path}: no prompts")
    return prompts


def _parse(raw: object, where: str) -> GenEvalPrompt:
    if not isinstance(raw, dict):
        raise MetadataError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    for key in ("tag", "include", "prompt"):
        if key not in raw:
            raise MetadataError(f"{where}: missing key {key!r}")
    if raw["tag"] not in TAGS:
        raise MetadataError(f"{where}: unknown tag {raw['tag']!r}; known: {', '.join(TAGS)}")
    include, exclude = raw["include"], raw.get("exclude", [])
    for name, items in (("include", include), ("exclude", exclude)):
        if not isinstance(items, list) or (name == "include" and not items):
            raise MetadataError(f"{where}: {name!r} must be a non-empty list of objects")
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("class"), str):
                raise MetadataError(f"{where}: {name}[{i}] needs a 'class' string")
            if not isinstance(item.get("count"), int) or item["count"] < 1:
                raise MetadataError(f"{where}: {name}[{i}] needs a 'count' >= 1")
            position = item.get("position")
            if position is not None and not (
                isinstance(position, list)
                and len(position) == 2
                and position[0] in POSITIONS
                and isinstance(position[1], int)
                and 0 <= position[1] < i
            ):
                raise MetadataError(
                    f"{where}: {name}[{i}].position must be [one of {', '.join(POSITIONS)}, "
                    f"index of an earlier include entry], got {position!r}"
                )
    return GenEvalPrompt(raw["tag"], str(raw["prompt"]), include, exclude, source=where)


def check_drawable(prompts: list[GenEvalPrompt]) -> None:
    """Refuse prompts naming a class or colour ShapesWorld cannot draw, or too many objects."""
    for p in prompts:
        where = p.source or f"prompt {p.prompt!r}"
        for item in p.include + p.exclude:
            if item["class"] not in sw.SHAPES:
                raise MetadataError(
                    f"{where}: class {item['class']!r} cannot be drawn in ShapesWorld "
                    f"(classes: {', '.join(sw.SHAPES)})"
                )
            if "color" in item and item["color"] not in sw.COLORS:
                raise MetadataError(
                    f"{where}: color {item['color']!r} cannot be drawn in ShapesWorld "
                    f"(colors: {', '.join(sw.COLORS)})"
                )
        total = sum(item["count"] for item in p.include)
        if total > sw.GRID * sw.GRID:
            raise MetadataError(f"{where}: {total} objects do not fit the {sw.GRID}x{sw.GRID} grid")
