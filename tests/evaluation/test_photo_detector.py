"""GenEval on photographs: a transformers object detector for classes and boxes, CLIP for colours,
both loaded from local folders. Tested on tiny models built here: a DETR that always sees a dog
in the middle of the image, and a random CLIP."""

import json

import numpy as np
import pytest
import torch
import transformers as tf

from fedumm.data.geneval import GenEvalPrompt, write_metadata
from fedumm.evaluation.detection import check_covered
from fedumm.evaluation.geneval import judge, load_detector
from fedumm.evaluation.photo_detector import COLORS
from fedumm.models.text_tokenizer import train_text_tokenizer
from tests.tiny import run_tiny

LABELS = {0: "dog", 1: "cat", 2: "N/A"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(detector folder, CLIP folder)."""
    root = tmp_path_factory.mktemp("photo")
    torch.manual_seed(0)
    backbone = tf.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1], out_features=["stage4"]
    )
    config = tf.DetrConfig(
        use_timm_backbone=False,
        backbone_config=backbone,
        use_pretrained_backbone=False,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=4,
        id2label=LABELS,
        label2id={v: k for k, v in LABELS.items()},
    )
    detr = tf.DetrForObjectDetection(config)
    with torch.no_grad():  # every query: a confident dog, a box of half the image, centred
        detr.class_labels_classifier.weight.zero_()
        detr.class_labels_classifier.bias.copy_(torch.tensor([8.0, 0.0, 0.0, 0.0]))
        last = detr.bbox_predictor.layers[-1]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0]))  # sigmoid: (0.5, 0.5, 0.5, 0.5)
    detr.save_pretrained(root / "detr")
    tf.DetrImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 64}).save_pretrained(
        root / "detr"
    )
    tokenizer = train_text_tokenizer(["a photo of a red dog", "a blue-colored cat object"], 300)
    clip = tf.CLIPModel(
        tf.CLIPConfig(
            text_config=dict(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=2,
                max_position_embeddings=32,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            ),
            vision_config=dict(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=2,
                image_size=32,
                patch_size=8,
            ),
            projection_dim=16,
        )
    )
    clip.save_pretrained(root / "clip")
    tokenizer.save_pretrained(root / "clip")
    tf.CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(root / "clip")
    return root / "detr", root / "clip"


def test_objects_come_with_classes_boxes_confidences_and_colours(models):
    detector = load_detector("photo", str(models[0]), str(models[1]))
    assert detector.classes == {"dog", "cat"} and detector.colors == set(COLORS)
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    found = detector(image)
    assert len(found) == 4  # every query is a dog above GenEval's threshold
    for d in found:
        assert d.cls == "dog" and d.color in COLORS and d.score > 0.9
        assert d.box == pytest.approx((16.0, 12.0, 48.0, 36.0))  # centre 0.5, size 0.5
    dog = GenEvalPrompt("single_object", "a photo of a dog", [{"class": "dog", "count": 1}])
    cat = GenEvalPrompt("single_object", "a photo of a cat", [{"class": "cat", "count": 1}])
    assert judge(dog, found)[0] and not judge(cat, found)[0]


def test_a_detector_that_cannot_tell_a_class_is_refused_naming_it(models):
    detector = load_detector("photo", str(models[0]), str(models[1]))
    giraffe = GenEvalPrompt(
        "colors", "a photo of a teal giraffe", [{"class": "giraffe", "count": 1, "color": "teal"}]
    )
    with pytest.raises(ValueError, match=r"missing classes \['giraffe'\], missing colors \['teal'"):
        check_covered([giraffe], detector, "photo")
    with pytest.raises(ValueError, match="needs eval.detector_model"):
        load_detector("photo")
    with pytest.raises(FileNotFoundError, match="eval.detector_model: no model folder"):
        load_detector("photo", str(models[0].parent / "nowhere"), str(models[1]))


def test_geneval_metadata_with_coco_classes_is_judged_by_the_photo_detector(
    models, tiny_foundation, tmp_path
):
    metadata = tmp_path / "evaluation_metadata.jsonl"
    write_metadata(
        [
            GenEvalPrompt("single_object", "a photo of a dog", [{"class": "dog", "count": 1}]),
            GenEvalPrompt("single_object", "a photo of a cat", [{"class": "cat", "count": 1}]),
        ],
        metadata,
    )
    out = tmp_path / "run"
    result = run_tiny(
        out,
        tiny_foundation,
        "data.tasks=[generation]",
        "baselines.local=false",
        "baselines.centralized=false",
        f"data.generation.metadata={metadata}",
        "eval.detector=photo",
        f"eval.detector_model={models[0]}",
        f"eval.color_model={models[1]}",
    )
    assert result.exit_code == 0, result.output
    final = json.loads((out / "results.json").read_text())["final"]["metrics"]
    assert final["geneval_per_tag"] == {"single_object": 50.0}  # a dog everywhere, never a cat
    giraffe = tmp_path / "giraffe.jsonl"
    write_metadata(
        [GenEvalPrompt("single_object", "a giraffe", [{"class": "giraffe", "count": 1}])], giraffe
    )
    photo = [
        "eval.detector=photo",
        f"eval.detector_model={models[0]}",
        f"eval.color_model={models[1]}",
    ]
    result = run_tiny(
        tmp_path / "refused",
        tiny_foundation,
        "data.tasks=[generation]",
        f"data.generation.metadata={giraffe}",
        *photo,
    )
    assert result.exit_code == 1 and "missing classes ['giraffe']" in result.output
    assert not (tmp_path / "refused" / "results.json").exists()
