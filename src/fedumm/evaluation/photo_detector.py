"""GenEval's detector for photographs, from models transformers ships, loaded from local folders.

GenEval finds objects with Mask2Former (COCO classes) and reads each object's colour with CLIP
(ViT-L-14): zero-shot over ten colours, each the mean of three prompt templates naming the
object's class, on the object's box. Here the object detector is any transformers object
detection model (`AutoModelForObjectDetection`, e.g. DETR on COCO; its `id2label` are the
classes it can tell) and the colour model any CLIP (`CLIPModel` with its tokenizer and image
processor). Boxes keep their confidence: `judge` applies GenEval's thresholds (0.3; 0.9 for
counting) and order. Without instance masks the box is the crop (GenEval composites the mask
on a grey background first when it has one).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fedumm.evaluation.detection import Detection

COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
TEMPLATES = ("a photo of a {c} {cls}", "a photo of a {c}-colored {cls}", "a photo of a {c} object")
LOWEST = 0.3  # GenEval's lowest threshold: weaker boxes never count


def _features(out) -> torch.Tensor:
    """CLIP's projected embeddings, normalised (newer transformers wrap them in an output)."""
    embeds = out if isinstance(out, torch.Tensor) else out.pooler_output
    return torch.nn.functional.normalize(embeds.float(), dim=-1)


def _folder(path: str, what: str) -> str:
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"eval.{what}: no model folder at {path} (config.json missing)")
    return str(path)


class PhotoDetector:
    """Objects (class, box, confidence) from an object detector, colours from CLIP."""

    image_size = None  # reads images at any size

    def __init__(self, detector_model: str, color_model: str, device: str = "cpu"):
        from transformers import (
            AutoImageProcessor,
            AutoModelForObjectDetection,
            AutoTokenizer,
            CLIPModel,
        )

        self.device = torch.device(device)
        source = _folder(detector_model, "detector_model")
        self.detector = AutoModelForObjectDetection.from_pretrained(source).to(self.device).eval()
        self.detector_processor = AutoImageProcessor.from_pretrained(source)
        labels = self.detector.config.id2label
        self.labels = {int(i): name for i, name in labels.items() if name not in ("N/A", "")}
        self.classes = frozenset(self.labels.values())
        self.colors = frozenset(COLORS)
        clip = _folder(color_model, "color_model")
        self.clip = CLIPModel.from_pretrained(clip).to(self.device).eval()
        self.clip_tokenizer = AutoTokenizer.from_pretrained(clip)
        self.clip_processor = AutoImageProcessor.from_pretrained(clip)
        self._colors_of: dict[str, torch.Tensor] = {}  # class -> (colors, dim) text embeddings

    @torch.no_grad()
    def _color_classifier(self, cls: str) -> torch.Tensor:
        """Per colour, the normalised mean of its templates' text embeddings (as GenEval)."""
        if cls not in self._colors_of:
            texts = [t.format(c=c, cls=cls) for c in COLORS for t in TEMPLATES]
            tokens = self.clip_tokenizer(texts, padding=True, return_tensors="pt").to(self.device)
            embeds = _features(self.clip.get_text_features(**tokens))
            means = embeds.view(len(COLORS), len(TEMPLATES), -1).mean(1)
            self._colors_of[cls] = torch.nn.functional.normalize(means, dim=-1)
        return self._colors_of[cls]

    @torch.no_grad()
    def _colors(self, image: np.ndarray, boxes: list[tuple], classes: list[str]) -> list[str]:
        if not boxes:
            return []
        crops = []
        for x0, y0, x1, y1 in boxes:
            x0, y0 = max(int(x0), 0), max(int(y0), 0)
            x1, y1 = max(int(np.ceil(x1)), x0 + 1), max(int(np.ceil(y1)), y0 + 1)
            crops.append(image[y0:y1, x0:x1])
        pixels = self.clip_processor(images=crops, return_tensors="pt")["pixel_values"]
        embeds = _features(self.clip.get_image_features(pixel_values=pixels.to(self.device)))
        return [
            COLORS[int((self._color_classifier(c) @ e).argmax())] for e, c in zip(embeds, classes)
        ]

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> list[Detection]:
        height, width = image.shape[:2]
        inputs = self.detector_processor(images=[image], return_tensors="pt").to(self.device)
        outputs = self.detector(**inputs)
        found = self.detector_processor.post_process_object_detection(
            outputs, threshold=LOWEST, target_sizes=[(height, width)]
        )[0]
        kept = [
            (float(s), self.labels[int(label)], tuple(float(v) for v in box))
            for s, label, box in zip(found["scores"], found["labels"], found["boxes"])
            if int(label) in self.labels
        ]
        boxes = [
            (max(0.0, x0), max(0.0, y0), min(width, x1), min(height, y1))
            for _, _, (x0, y0, x1, y1) in kept
        ]
        colors = self._colors(image, boxes, [cls for _, cls, _ in kept])
        return [
            Detection(cls, color, box, score)
            for (score, cls, _), box, color in zip(kept, boxes, colors)
        ]
