"""The tasks a federation learns: training sequences with the labels a skew is over, and how a
model is scored on each. One unified model, one loss (next-token prediction on the target
tokens: answer tokens for VQA, image tokens for generation), so clients may hold either or both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedumm.config import EvalConfig, RunConfig
from fedumm.data import geneval, shapesworld
from fedumm.evaluation.geneval import ShapesWorldParser, geneval_scores, judge
from fedumm.evaluation.vqa import answer_questions, vqa_accuracy
from fedumm.models.generate import text_to_image
from fedumm.models.processor import Encoded, UMMProcessor
from fedumm.seeding import derive_seed


@dataclass
class VQATask:
    """Encoded train samples, and the test questions with their answers and families."""

    train: list[Encoded]
    labels: list[str]  # what partition.key names, per train sample
    test_prompts: list[list[int]]
    test_answers: list[str]
    test_families: list[str]

    def evaluate(self, model, processor: UMMProcessor, cfg: EvalConfig, grid=None) -> dict:
        predictions = answer_questions(model, processor, self.test_prompts, cfg.batch_size)
        return vqa_accuracy(predictions, self.test_answers, self.test_families)


@dataclass
class GenerationTask:
    """Encoded prompt-image pairs, and GenEval-style prompts the model draws and is judged on."""

    train: list[Encoded]
    labels: list[str]  # GenEval tag or class, per train sample
    test: list[geneval.GenEvalPrompt]
    seed: int  # the sampling noise, the same at every evaluation so they compare

    def evaluate(self, model, processor: UMMProcessor, cfg: EvalConfig, grid=None) -> dict:
        """GenEval scores; with `grid` (a path), also a PNG of images per tag, framed by verdict."""
        prompts = [p for p in self.test for _ in range(cfg.images_per_prompt)]
        images = text_to_image(model, processor, [p.prompt for p in prompts], self.seed,
                               cfg.temperature, cfg.top_k, cfg.guidance_scale,
                               cfg.batch_size)  # fmt: skip
        parser = ShapesWorldParser()
        verdicts = [judge(p, parser(image))[0] for p, image in zip(prompts, images)]
        if grid is not None:
            from fedumm.report import generation_grid

            generation_grid(images, prompts, verdicts, Path(grid))
        return geneval_scores(prompts, verdicts)


Task = VQATask | GenerationTask


def build_tasks(cfg: RunConfig, processor: UMMProcessor) -> dict[str, Task]:
    """The tasks `data.tasks` names, keyed 'vqa' / 'generation'."""
    tasks: dict[str, Task] = {}
    if "vqa" in cfg.data.tasks:
        tasks["vqa"] = _vqa(cfg, processor)
    if "generation" in cfg.data.tasks:
        tasks["generation"] = _generation(cfg, processor)
    return tasks


def evaluate(tasks: dict[str, Task], model, processor, cfg: EvalConfig, grid=None) -> dict:
    """Every task's metrics in one flat dict (their keys do not collide)."""
    out: dict = {}
    for task in tasks.values():
        out.update(task.evaluate(model, processor, cfg, grid))
    return out


def _vqa(cfg: RunConfig, processor: UMMProcessor) -> VQATask:
    families = tuple(cfg.data.families)
    train = shapesworld.vqa_dataset(cfg.data.train_samples, "train", cfg.seed, families)
    test = shapesworld.vqa_dataset(cfg.data.test_samples, "test", cfg.seed, families)

    def encode(samples):
        images = np.stack([s.image for s in samples])
        return processor.encode_vqa(
            images, [s.question for s in samples], [s.answer for s in samples]
        )

    return VQATask(
        train=encode(train),
        labels=[getattr(s, cfg.partition.key) for s in train],
        test_prompts=[e.prompt for e in encode(test)],
        test_answers=[s.answer for s in test],
        test_families=[s.family for s in test],
    )


def _generation(cfg: RunConfig, processor: UMMProcessor) -> GenerationTask:
    gen = cfg.data.generation
    if gen.metadata is not None:
        test = geneval.read_metadata(gen.metadata)
        geneval.check_drawable(test)
    else:
        test = geneval.evaluation_prompts(gen.test_prompts_per_tag, cfg.seed)
    samples = geneval.generation_dataset(gen.train_samples, cfg.seed)
    image_ids = processor.image_ids(np.stack([s.image for s in samples]))
    rng = np.random.default_rng(derive_seed(cfg.seed, 0xD0))
    dropped = rng.random(len(samples)) < gen.prompt_dropout  # empty prompt: learns p(image)
    train = [processor.generation("" if drop else s.prompt.prompt, ids)
             for s, ids, drop in zip(samples, image_ids, dropped)]  # fmt: skip
    labels = [s.prompt.tag if cfg.partition.generation_key == "tag" else s.prompt.label
              for s in samples]  # fmt: skip
    return GenerationTask(train, labels, test, derive_seed(cfg.seed, 0x6E))
