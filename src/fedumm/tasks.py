"""The tasks a federation learns: training sequences with the labels a skew is over, and how a
model is scored on each. One unified model, one loss (next-token prediction on the target
tokens: answer tokens for VQA and classification, image tokens for generation), so clients may
hold any mix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedumm.config import EvalConfig, RunConfig
from fedumm.data import (
    classification_files,
    geneval,
    hf_datasets,
    incident_reports,
    shapesworld,
    vqa_v2,
)
from fedumm.data.images import resize
from fedumm.data.modality import IMAGE, IMAGE_TEXT, TEXT
from fedumm.evaluation.classification import class_scores, classification_metrics
from fedumm.evaluation.detection import Detector, check_covered
from fedumm.evaluation.geneval import ShapesWorldParser, geneval_scores, judge, load_detector
from fedumm.evaluation.vqa import answer_questions, vqa_accuracy
from fedumm.models.processor import Encoded, Processor, encode_vqa
from fedumm.runtime import CPU, Runtime, resolve
from fedumm.seeding import derive_seed


@dataclass
class VQATask:
    """Encoded train samples, and the test questions with their answers and families."""

    train: list[Encoded]
    labels: list[str]  # what partition.key names, per train sample
    test_prompts: list[Encoded]  # prompts only, with their images
    test_answers: list[str | list[str]]  # one answer, or the humans' answers (VQA v2)
    test_families: list[str]
    source: str
    skipped_images: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """What was read: sizes, and the image files left out as undecodable."""
        return {
            "source": self.source,
            "train_samples": len(self.train),
            "test_samples": len(self.test_prompts),
            "skipped_images": self.skipped_images,
        }

    def evaluate(self, model, processor: Processor, cfg: EvalConfig, grid=None) -> dict:
        predictions = answer_questions(model, processor, self.test_prompts, cfg.batch_size)
        return vqa_accuracy(predictions, self.test_answers, self.test_families, cfg.vqa_metric)


@dataclass
class GenerationTask:
    """Encoded prompt-image pairs, and GenEval-style prompts the model draws and is judged on."""

    train: list[Encoded]
    labels: list[str]  # GenEval tag or class, per train sample
    test: list[geneval.GenEvalPrompt]
    seed: int  # the sampling noise, the same at every evaluation so they compare
    source: str  # 'shapesworld', or the GenEval metadata file the prompts came from
    detector: Detector  # finds the objects in a generated image (eval.detector)

    def summary(self) -> dict:
        return {
            "source": self.source,
            "train_samples": len(self.train),
            "test_prompts": len(self.test),
        }

    def evaluate(self, model, processor: Processor, cfg: EvalConfig, grid=None) -> dict:
        """GenEval scores; with `grid` (a path), also a PNG of images per tag, framed by verdict.
        Images are judged at the size the detector reads, if it reads one size only."""
        prompts = [p for p in self.test for _ in range(cfg.images_per_prompt)]
        images = processor.draw(
            model,
            [p.prompt for p in prompts],
            self.seed,
            cfg.temperature,
            cfg.top_k,
            cfg.guidance_scale,
            cfg.batch_size,
        )
        side = getattr(self.detector, "image_size", None)
        if side is not None and images.shape[1] != side:
            images = np.stack([resize(image, side) for image in images])
        verdicts = [judge(p, self.detector(image))[0] for p, image in zip(prompts, images)]
        if grid is not None:
            from fedumm.report import generation_grid

            generation_grid(images, prompts, verdicts, Path(grid))
        return geneval_scores(prompts, verdicts)


@dataclass
class ClassificationTask:
    """Image + text -> class (ShapesWorld incident reports, Hateful Memes, CrisisMMD). Training
    samples are encoded with the modalities their client keeps (`train_as`); the test set always
    has both."""

    processor: Processor
    classes: list[str]
    images: list  # train images as the model keeps them (codes, bytes, or a stored reference)
    messages: list[str]
    labels: list[str]  # the class, per train sample: what a label skew is over
    test_images: list
    test_messages: list[str]
    test_labels: list[str]
    agnostic_prompt: bool
    source: str
    skipped_images: list[str]  # image files that could not be decoded (left out)

    def encode(self, image, text: str, label: str, modality: str) -> Encoded:
        question = incident_reports.question(text, modality, self.agnostic_prompt)
        return self.processor.understanding(None if modality == TEXT else image, question, label)

    def train_as(self, modalities: np.ndarray) -> list[Encoded]:
        """The training pool with sample i keeping `modalities[i]`."""
        return [
            self.encode(*sample, m)
            for *sample, m in zip(self.images, self.messages, self.labels, modalities)
        ]

    @property
    def train(self) -> list[Encoded]:
        return self.train_as(np.full(len(self.labels), IMAGE_TEXT))

    def summary(self) -> dict:
        """What was read: sizes, classes, and the image files left out as undecodable."""
        return {
            "source": self.source,
            "train_samples": len(self.labels),
            "test_samples": len(self.test_labels),
            "classes": self.classes,
            "skipped_images": self.skipped_images,
        }

    def test_prompts(self, modality: str = IMAGE_TEXT) -> list[Encoded]:
        return [
            self.encode(i, t, y, modality).prompt_only()
            for i, t, y in zip(self.test_images, self.test_messages, self.test_labels)
        ]

    def evaluate(self, model, processor: Processor, cfg: EvalConfig, grid=None) -> dict:
        """Accuracy, macro F1, AUC from label-token scores on image + text; with
        cfg.modality_ablation also the accuracy given the image only and the text only."""

        def scores(modality: str) -> np.ndarray:
            return class_scores(
                model, processor, self.test_prompts(modality), self.classes, cfg.batch_size
            )

        out = classification_metrics(scores(IMAGE_TEXT), self.test_labels, self.classes)
        if cfg.modality_ablation:
            for modality in (IMAGE, TEXT):
                alone = classification_metrics(scores(modality), self.test_labels, self.classes)
                out[f"classification_accuracy_{modality}_only"] = alone["classification_accuracy"]
        return out


Task = VQATask | GenerationTask | ClassificationTask


def build_tasks(cfg: RunConfig, processor: Processor) -> dict[str, Task]:
    """The tasks `data.tasks` names, keyed 'vqa' / 'generation' / 'classification'."""
    tasks: dict[str, Task] = {}
    if "vqa" in cfg.data.tasks:
        tasks["vqa"] = _vqa(cfg, processor)
    if "generation" in cfg.data.tasks:
        if not processor.draws:
            raise ValueError(
                f"data.tasks: generation needs a model that draws images; {cfg.model.name_or_path}"
                f" is a {processor.family_name} model, which only reads them (the families that "
                "draw: the built-in model, janus)"
            )
        missing = getattr(processor, "missing_for_generation", [])
        if missing:
            raise ValueError(
                f"data.tasks: generation needs the {', '.join(missing)} of "
                f"{cfg.model.name_or_path}, which its checkpoint does not hold (an "
                "understanding-only export?)"
            )
        tasks["generation"] = _generation(cfg, processor, str(resolve(cfg.runtime).device))
    if "classification" in cfg.data.tasks:
        tasks["classification"] = _classification(cfg, processor)
    return tasks


def evaluate(
    tasks: dict[str, Task], model, processor, cfg: EvalConfig, grid=None, runtime: Runtime = CPU
) -> dict:
    """Every task's metrics in one flat dict (their keys do not collide), computed in the
    runtime's precision on the model's device."""
    out: dict = {}
    with runtime.autocast():
        for task in tasks.values():
            out.update(task.evaluate(model, processor, cfg, grid))
    return out


def _vqa(cfg: RunConfig, processor: Processor) -> VQATask:
    if cfg.data.kind == "vqa_v2":
        return _vqa_v2(cfg, processor)
    if cfg.data.kind == "hf_dataset":
        return _vqa_hf_dataset(cfg, processor)
    families = tuple(cfg.data.families)
    train = shapesworld.vqa_dataset(cfg.data.train_samples, "train", cfg.seed, families)
    test = shapesworld.vqa_dataset(cfg.data.test_samples, "test", cfg.seed, families)

    def encode(samples):
        images = np.stack([s.image for s in samples])
        return encode_vqa(
            processor, images, [s.question for s in samples], [s.answer for s in samples]
        )

    return VQATask(
        train=encode(train),
        labels=[getattr(s, cfg.partition.key) for s in train],
        test_prompts=[e.prompt_only() for e in encode(test)],
        test_answers=[s.answer for s in test],
        test_families=[s.family for s in test],
        source="shapesworld",
    )


def _vqa_v2(cfg: RunConfig, processor: Processor) -> VQATask:
    """VQA v2's files: trained on the most common human answer, scored against all ten;
    the families are VQA v2's answer types."""
    spec, root = cfg.data.vqa_v2, cfg.data.vqa_v2.root
    splits, skipped = [], []
    for subtype, limit in (
        (spec.train_subtype, cfg.data.train_samples),
        (spec.test_subtype, cfg.data.test_samples),
    ):
        questions = vqa_v2.read_questions(root, subtype, limit)
        codes, missing = vqa_v2.encode_images(
            questions, root, subtype, processor.image_size, processor.encode_stored
        )
        skipped += missing
        kept = [q for q in questions if q.image_id in codes]
        if not kept:
            raise ValueError(f"{root}: no question of {subtype} has a decodable image")
        splits.append(
            [(q, processor.understanding(codes[q.image_id], q.question, q.answer)) for q in kept]
        )
    train, test = splits
    key = {"answer": "answer", "family": "answer_type"}[cfg.partition.key]
    return VQATask(
        train=[e for _, e in train],
        labels=[getattr(q, key) for q, _ in train],
        test_prompts=[e.prompt_only() for _, e in test],
        test_answers=[q.answers for q, _ in test],
        test_families=[q.answer_type for q, _ in test],
        source="vqa_v2",
        skipped_images=skipped,
    )


def _vqa_hf_dataset(cfg: RunConfig, processor: Processor) -> VQATask:
    """A Hugging Face data set's rows: trained on the most common answer, scored against all
    of a row's answers (one answer: exact match after normalisation)."""
    spec = cfg.data.hf_dataset
    train, test = (
        hf_datasets.read_vqa(spec, split, processor.image_size, limit, processor.encode_stored)
        for split, limit in (
            (spec.train_split, cfg.data.train_samples),
            (spec.test_split, cfg.data.test_samples),
        )
    )
    for rows, split in ((train, spec.train_split), (test, spec.test_split)):
        if not rows.questions:
            raise ValueError(f"{spec.path}: no row of split {split!r} has a decodable image")
    encoded = [
        [
            processor.understanding(*sample)
            for sample in zip(rows.images, rows.questions, rows.targets)
        ]
        for rows in (train, test)
    ]
    return VQATask(
        train=encoded[0],
        labels=train.targets if cfg.partition.key == "answer" else train.families,
        test_prompts=[e.prompt_only() for e in encoded[1]],
        test_answers=[a if len(a) > 1 else a[0] for a in test.answers],
        test_families=test.families,
        source="hf_dataset",
        skipped_images=train.skipped_images + test.skipped_images,
    )


def _generation(cfg: RunConfig, processor: Processor, device: str = "cpu") -> GenerationTask:
    """Prompt-image pairs from ShapesWorld to train on; GenEval prompts (generated, or a
    metadata file) to be judged by the detector, which must tell every class and colour they
    name (checked, with the detector loaded, before any training)."""
    gen, ev = cfg.data.generation, cfg.eval
    detector = load_detector(ev.detector, ev.detector_model, ev.color_model, device)
    if gen.metadata is not None:
        test = geneval.read_metadata(gen.metadata)
        if isinstance(detector, ShapesWorldParser):  # its images are ShapesWorld's
            geneval.check_drawable(test)
        check_covered(test, detector, ev.detector)
    else:
        test = geneval.evaluation_prompts(gen.test_prompts_per_tag, cfg.seed)
    samples = geneval.generation_dataset(gen.train_samples, cfg.seed)
    codes = processor.encode_generation_images(np.stack([s.image for s in samples]))
    rng = np.random.default_rng(derive_seed(cfg.seed, 0xD0))
    dropped = rng.random(len(samples)) < gen.prompt_dropout  # no prompt: learns p(image)
    train = [
        processor.generation(s.prompt.prompt, ids, unconditional=drop)
        for s, ids, drop in zip(samples, codes, dropped)
    ]
    labels = [
        s.prompt.tag if cfg.partition.generation_key == "tag" else s.prompt.label for s in samples
    ]
    source = gen.metadata or "shapesworld"
    return GenerationTask(train, labels, test, derive_seed(cfg.seed, 0x6E), source, detector)


def _classification(cfg: RunConfig, processor: Processor) -> ClassificationTask:
    spec = cfg.data.classification
    skipped: list[str] = []
    if spec.source == "shapesworld":
        train = incident_reports.report_dataset(spec.train_samples, "train", cfg.seed)
        test = incident_reports.report_dataset(spec.test_samples, "test", cfg.seed)
        classes = list(incident_reports.CLASSES)
        images = [
            processor.encode_images(np.stack([s.image for s in split])) for split in (train, test)
        ]
    else:  # the readers encode each image as they read it
        train_split, test_split = _classification_files(spec, processor)
        train, test = train_split.samples, test_split.samples
        images = [[s.image for s in split] for split in (train, test)]
        skipped = train_split.skipped_images + test_split.skipped_images
        if not train or not test:
            raise ValueError(
                f"{spec.root or spec.hf_dataset.path}: no decodable samples in the "
                f"{'training' if not train else 'test'} split"
            )
        classes = sorted({s.label for s in train + test})
    return ClassificationTask(
        processor,
        classes,
        images[0],
        [s.message for s in train],
        [s.label for s in train],
        images[1],
        [s.message for s in test],
        [s.label for s in test],
        spec.agnostic_prompt,
        spec.source,
        skipped,
    )


def _classification_files(spec, processor: Processor) -> tuple[classification_files.Split, ...]:
    """(train, test) of a public dataset's files or of a Hugging Face data set, each image
    encoded by `processor` as it is read."""
    limits, size = (spec.train_samples, spec.test_samples), processor.image_size
    encode = processor.encode_stored
    if spec.source == "hf_dataset":
        data = spec.hf_dataset
        splits = (data.train_split, data.test_split)
        return tuple(
            hf_datasets.read_classification(data, split, size, limit, encode)
            for split, limit in zip(splits, limits)
        )
    defaults = classification_files.DEFAULT_FILES[spec.source]
    return tuple(
        classification_files.read_split(
            spec.source, spec.root, name or default, size, limit, encode
        )
        for name, default, limit in zip((spec.train_file, spec.test_file), defaults, limits)
    )
