"""The incident-report classification task: its data and how samples reach the model."""

from collections import Counter

import numpy as np
import pytest

from fedumm.data import incident_reports, shapesworld
from fedumm.data.modality import IMAGE, IMAGE_TEXT, TEXT


def shows(image, color):
    return bool((image.reshape(-1, 3) == shapesworld.COLORS[color]).all(1).any())


def test_classes_are_balanced_and_each_modality_carries_one_factor():
    samples = incident_reports.report_dataset(240, "train", 0)
    assert Counter(s.label for s in samples) == {c: 40 for c in incident_reports.CLASSES}
    for s in samples:
        index = incident_reports.CLASSES.index(s.label)
        hazard = list(incident_reports.HAZARDS)[index % 3]
        assert shows(s.image, "red") == (hazard == "fire")  # the image carries the hazard
        assert shows(s.image, "blue") == (hazard == "flood")
        asks = any(
            s.message == t.format(thing=s.message.split("the ")[-1])
            for t in incident_reports.ASKS_HELP
        )
        assert asks == (index >= 3)  # the message carries the request


def test_text_names_colours_independently_of_the_hazard():
    samples = incident_reports.report_dataset(600, "train", 0)
    fire = [s for s in samples if s.label in ("fire", "fire help")]
    safe = [s for s in samples if s.label in ("safe", "request")]
    rate = [np.mean(["red" in s.message for s in group]) for group in (fire, safe)]
    assert abs(rate[0] - rate[1]) < 0.12 and 0.05 < rate[0] < 0.35


def test_split_and_seed_determine_the_data():
    a, b = (
        incident_reports.report_dataset(30, "test", 1),
        incident_reports.report_dataset(30, "test", 1),
    )
    assert [s.message for s in a] == [s.message for s in b]
    assert all((x.image == y.image).all() for x, y in zip(a, b))
    other = incident_reports.report_dataset(30, "train", 1)
    assert [s.message for s in a] != [s.message for s in other]
    with pytest.raises(ValueError, match="split must be"):
        incident_reports.report_dataset(3, "val", 0)


@pytest.mark.parametrize("agnostic", [False, True])
def test_questions_mark_a_missing_message_and_the_agnostic_prompt_is_fixed(agnostic):
    text = "help at the red circle"
    both, image, only_text = (
        incident_reports.question(text, m, agnostic) for m in (IMAGE_TEXT, IMAGE, TEXT)
    )
    assert text in both and text in only_text and text not in image
    assert image.endswith(incident_reports.NO_MESSAGE)
    instructions = {q.split(":")[0] for q in (both, image, only_text)}
    assert len(instructions) == (1 if agnostic else 3)


def test_a_missing_image_has_no_image_tokens(tiny_foundation):
    from fedumm.config import RunConfig
    from fedumm.models import foundation
    from fedumm.tasks import build_tasks

    _, processor = foundation.load(str(tiny_foundation))
    cfg = RunConfig.model_validate(
        {
            "data": {
                "tasks": ["classification"],
                "classification": {"train_samples": 12, "test_samples": 6},
            },
            "partition": {"min_samples": 1},
        }
    )
    task = build_tasks(cfg, processor)["classification"]
    kept = np.array([IMAGE_TEXT, IMAGE, TEXT] * 4)
    encoded = task.train_as(kept)
    low, high = processor.image_id_range
    for e, m, label in zip(encoded, kept, task.labels):
        image_tokens = sum(low <= t < high for t in e.input_ids)
        assert (processor.boi in e.input_ids) == (m != TEXT)
        assert image_tokens == (0 if m == TEXT else processor.vq.tokens_per_image)
        assert processor.decode_text(e.target) == label
        assert e.target[-1] == processor.eos
    assert all(processor.boi in p.input_ids for p in task.test_prompts())  # test keeps both
