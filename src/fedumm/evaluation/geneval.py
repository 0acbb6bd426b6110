"""GenEval-style scoring: find the objects in a generated image, then apply GenEval's rules.

GenEval detects objects (Mask2Former), reads their colour (CLIP) and judges each image against its
prompt's metadata. Here the detector is a `Detector`: anything that maps an image to a list of
`Detection`s. The default, `ShapesWorldParser`, is deterministic: every object of a ShapesWorld
scene lies inside one 8x8 grid cell, so each cell is matched to its nearest template (empty, or a
shape x colour x pixel offset). A detector for real photos plugs in through the same interface.

The rules are GenEval's (`evaluate_images.py`): detections above a confidence of 0.3 count (0.9
for counting prompts), at most 16 per class, most confident first; each include entry needs
`count` objects of its class; with a colour, that many of them in that colour; with a position,
each of them in that relation to each object of the referenced entry, by GenEval's box-centre
test with its 0.1 margin; an exclude entry fails the image if `count` or more of its class are
present. A parser's detections are all certain (score 1), so among objects of a class those of
the asked colour are taken first.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from fedumm.data import shapesworld as sw
from fedumm.data.geneval import TAGS, GenEvalPrompt
from fedumm.evaluation.detection import Detection, Detector
from fedumm.models.image_tokenizer import to_patches

POSITION_THRESHOLD = 0.1  # GenEval's margin, as a share of the two boxes' sizes
THRESHOLD, COUNTING_THRESHOLD = 0.3, 0.9  # GenEval's confidence thresholds
MAX_OBJECTS = 16  # per class


class ShapesWorldParser:
    """Nearest-template scene parser for 32x32 ShapesWorld images (exact on renderings)."""

    image_size = sw.CANVAS  # a model that draws larger is judged on its images scaled down
    classes = frozenset(sw.SHAPES)
    colors = frozenset(sw.COLORS)

    def __init__(self) -> None:
        names: list[tuple[str, str, int, int] | None] = [None]  # None: an empty cell
        patches = [np.full((sw.CELL, sw.CELL, 3), sw.BACKGROUND, dtype=np.uint8)]
        offsets = range(sw.MAX_OFFSET + 1)
        for shape in sw.SHAPES:
            for color in sw.COLORS:
                for dy in offsets:
                    for dx in offsets:
                        scene = sw.Scene((sw.Obj(shape, color, 0, 0, dy, dx),))
                        patches.append(sw.render(scene)[: sw.CELL, : sw.CELL])
                        names.append((shape, color, dy, dx))
        self.names = names
        self.templates = to_patches(np.stack(patches), sw.CELL)[:, 0]  # (T, CELL*CELL*3)

    def __call__(self, image: np.ndarray) -> list[Detection]:
        if image.shape != (sw.CANVAS, sw.CANVAS, 3):
            raise ValueError(f"expected a {sw.CANVAS}x{sw.CANVAS} RGB image, got {image.shape}")
        cells = to_patches(image[None], sw.CELL)[0]  # (GRID*GRID, CELL*CELL*3), row-major
        d = ((cells[:, None, :] - self.templates[None]) ** 2).sum(-1)
        found = []
        for index, best in enumerate(d.argmin(1)):
            name = self.names[best]
            if name is None:
                continue
            shape, color, dy, dx = name
            y0 = (index // sw.GRID) * sw.CELL + dy
            x0 = (index % sw.GRID) * sw.CELL + dx
            box = (x0, y0, x0 + sw.SHAPE_SIZE, y0 + sw.SHAPE_SIZE)
            found.append(Detection(shape, color, tuple(float(v) for v in box)))
        return found


def load_detector(
    spec: str,
    detector_model: str | None = None,
    color_model: str | None = None,
    device: str = "cpu",
) -> Detector:
    """'shapesworld' (the built-in parser); 'photo' (a transformers object detector and CLIP
    from the folders `detector_model` and `color_model`); or 'package.module:Name', a class or
    function that, called without arguments, gives a Detector."""
    if spec == "shapesworld":
        return ShapesWorldParser()
    if spec == "photo":
        from fedumm.evaluation.photo_detector import PhotoDetector

        if detector_model is None or color_model is None:
            raise ValueError(
                "eval.detector 'photo' needs eval.detector_model (an object "
                "detector's folder) and eval.color_model (a CLIP folder)"
            )
        return PhotoDetector(detector_model, color_model, device)
    import importlib

    module_name, _, name = spec.partition(":")
    if not name:
        raise ValueError(
            f"detector {spec!r}: expected 'shapesworld', 'photo' or 'package.module:Name'"
        )
    try:
        factory = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"detector {spec!r} cannot be loaded: {e}") from None
    detector = factory()
    if not callable(detector):
        raise ValueError(f"detector {spec!r}: {name}() is not callable on an image")
    for what in ("classes", "colors"):
        if not hasattr(detector, what):
            raise ValueError(f"detector {spec!r}: {name}() has no `{what}` (the set it can tell)")
    return detector


def relative_position(a: Detection, b: Detection) -> set[str]:
    """Where `a` is relative to `b`, as GenEval decides it from box centres and sizes."""
    box_a, box_b = np.array(a.box).reshape(2, 2), np.array(b.box).reshape(2, 2)
    offset = box_a.mean(0) - box_b.mean(0)
    dims = np.abs(np.diff(box_a, axis=0))[0] + np.abs(np.diff(box_b, axis=0))[0]
    revised = np.maximum(np.abs(offset) - POSITION_THRESHOLD * dims, 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def judge(prompt: GenEvalPrompt, detections: list[Detection]) -> tuple[bool, str]:
    """GenEval's verdict for one image: (correct, reason if not)."""
    threshold = COUNTING_THRESHOLD if prompt.tag == "counting" else THRESHOLD
    by_class: dict[str, list[Detection]] = defaultdict(list)
    for det in sorted(detections, key=lambda d: -d.score):
        if det.score > threshold and len(by_class[det.cls]) < MAX_OBJECTS:
            by_class[det.cls].append(det)
    matched: list[list[Detection] | None] = []
    reasons = []
    for item in prompt.include:
        cls, count, color = item["class"], item["count"], item.get("color")
        candidates = by_class[cls]  # most confident first; among equals, the asked colour
        if color:
            candidates = sorted(candidates, key=lambda d: (-d.score, d.color != color))
        found = candidates[:count]
        ok = len(found) >= count
        if not ok:
            reasons.append(f"expected {cls} >= {count}, found {len(found)}")
        elif color and sum(d.color == color for d in found) < count:
            ok = False
            reasons.append(
                f"expected {color} {cls}, found {', '.join(str(d.color) for d in found)}"
            )
        elif "position" in item:
            relation, target = item["position"]
            targets = matched[target]
            if targets is None:
                ok = False
                reasons.append(f"no target for {cls} {relation}")
            elif not all(relation in relative_position(o, t) for o in found for t in targets):
                ok = False
                reasons.append(f"expected {cls} {relation} target")
        matched.append(found if ok else None)
    for item in prompt.exclude:
        if len(by_class[item["class"]]) >= item["count"]:
            reasons.append(f"expected {item['class']} < {item['count']}")
    return not reasons, "; ".join(reasons)


def geneval_scores(prompts: list[GenEvalPrompt], correct: list[bool]) -> dict:
    """Per-tag accuracy (%) and the overall score: the mean of the tags present, as GenEval."""
    if len(prompts) != len(correct):
        raise ValueError("one verdict per prompt is needed")
    hits: dict[str, list[bool]] = defaultdict(list)
    for p, ok in zip(prompts, correct):
        hits[p.tag].append(bool(ok))
    per_tag = {t: 100.0 * float(np.mean(hits[t])) for t in TAGS if t in hits}
    return {
        "geneval_overall": float(np.mean(list(per_tag.values()))),
        "geneval_per_tag": per_tag,
        "num_images": len(correct),
    }
