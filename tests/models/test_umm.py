import json

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from fedumm.config import PretrainConfig, load_config
from fedumm.data import shapesworld as sw
from fedumm.models import foundation
from fedumm.models.generate import generate
from fedumm.models.processor import IGNORE, collate
from fedumm.models.umm import UMMForCausalLM
from fedumm.pretraining import pretrain


def test_save_and_from_pretrained_round_trip_everything(tiny_foundation, tmp_path):
    model, processor = foundation.load(tiny_foundation)
    foundation.save(model, processor, tmp_path, {})
    again, processor2 = foundation.load(tmp_path)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    assert torch.count_nonzero(again.codebook) > 0  # the image tokenizer travelled with the weights
    auto = AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True)
    assert isinstance(auto, UMMForCausalLM)
    img = np.stack([s.image for s in sw.caption_dataset(4, "test", 0)])
    assert np.array_equal(processor2.encode_images(img), processor.encode_images(img))


def test_builtin_foundation_loads():
    model, processor = foundation.load("builtin")
    assert model.config.vocab_size == processor.text_vocab_size + processor.vq.size
    img = np.stack([s.image for s in sw.caption_dataset(20, "test", 1)])
    assert np.array_equal(processor.decode_images(processor.encode_images(img)), img)


def test_formats_put_the_loss_only_on_the_target(tiny_foundation):
    _, p = foundation.load(tiny_foundation)
    ids = p.encode_images(np.stack([sw.caption_dataset(1, "train", 0)[0].image]))[0]
    und = p.understanding(ids, "what color is the circle?", "red")
    assert p.decode_text(und.target) == "red" and und.target[-1] == p.eos
    assert und.prompt[-1] == p.sep and und.prompt[1] == p.boi
    gen = p.generation("a red circle.", ids)
    assert gen.target[:16] == ids.tolist() and gen.prompt[-1] == p.boi
    batch = collate([und, gen], p.pad)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert (batch["labels"] != IGNORE).sum() == len(und.target) + len(gen.target)


def test_generate_respects_band_and_padding(tiny_foundation):
    model, p = foundation.load(tiny_foundation)
    short = [p.bos, *p.text_ids("a red circle."), p.sep, p.boi]
    long = [p.bos, *p.text_ids("a red circle, a blue square and a green triangle."), p.sep, p.boi]
    out = generate(model, [short, long], 16, p.image_id_range, p.pad)
    assert all(p.image_id_range[0] <= t < p.image_id_range[1] for row in out for t in row)
    alone = generate(model, [short], 16, p.image_id_range, p.pad)
    assert out[0] == alone[0]  # left padding does not change a prompt's continuation
    g = torch.Generator().manual_seed(0)
    s1 = generate(
        model, [short] * 3, 16, p.image_id_range, p.pad, temperature=1.0, top_k=5, generator=g
    )
    g = torch.Generator().manual_seed(0)
    s2 = generate(
        model, [short] * 3, 16, p.image_id_range, p.pad, temperature=1.0, top_k=5, generator=g
    )
    assert s1 == s2


def test_pretraining_is_reproducible(tiny_foundation, tmp_path):
    from tests.conftest import TINY_PRETRAIN

    pretrain(PretrainConfig(**TINY_PRETRAIN), tmp_path)
    a, _ = foundation.load(tiny_foundation)
    b, _ = foundation.load(tmp_path)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_pretraining_with_matching_and_questions_reports_their_accuracy(tmp_path):
    from tests.conftest import TINY_PRETRAIN

    cfg = PretrainConfig(**TINY_PRETRAIN, matching_samples=32, question_samples=32)
    metrics = pretrain(cfg, tmp_path)
    card = json.loads((tmp_path / "pretraining.json").read_text())
    assert card["config"]["matching_samples"] == card["config"]["question_samples"] == 32
    for name in ("caption_matching_accuracy", "question_accuracy"):
        assert card["metrics"][name] == metrics[name]
        assert 0.0 <= metrics[name] <= 100.0
    plain = pretrain(PretrainConfig(**TINY_PRETRAIN), tmp_path / "plain")
    assert "question_accuracy" not in plain and "caption_matching_accuracy" not in plain


def test_short_captions_change_only_the_drawing_prompts():
    from fedumm.pretraining import pretraining_data
    from tests.conftest import TINY_PRETRAIN

    _, processor = foundation.build(PretrainConfig(**TINY_PRETRAIN))
    plain = pretraining_data(processor, PretrainConfig(**TINY_PRETRAIN), "train", 64)
    cfg = PretrainConfig(**TINY_PRETRAIN, short_captions=1.0)
    short = pretraining_data(processor, cfg, "train", 64)
    assert [e.input_ids for e in short["captioning"]] == [e.input_ids for e in plain["captioning"]]

    def counts_all_objects(part: list) -> list[bool]:  # the dense caption's "3 objects."
        return [" object" in processor.decode_text(e.prompt) for e in part]

    assert all(counts_all_objects(plain["generation"]))
    assert not any(counts_all_objects(short["generation"]))


def test_missing_foundation_is_a_clear_error(tmp_path):
    import pytest

    from fedumm.config import ConfigError

    listed = r"\(builtin, assistant, assistant-v2, captioner; builtin = assistant-v2\)"
    with pytest.raises(ConfigError, match=rf"'nope' is neither a shipped foundation {listed}"):
        foundation.load("nope")
    with pytest.raises(ConfigError, match="neither a shipped foundation"):
        foundation.load(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no foundation checkpoint"):
        foundation.load(tmp_path)  # a folder, but not a checkpoint


def test_shipped_foundations_by_name_and_checksum():
    """`builtin` is assistant-v2; the assistant and captioner that earlier results used stay
    loadable by name; their checksums differ; each card holds the config that rebuilds it."""
    assert foundation.location("builtin") == foundation.location("assistant-v2")
    sums = {name: foundation.checksum(foundation.location(name)) for name in foundation.names()}
    assert sums["builtin"] == sums["assistant-v2"]
    assert len({sums["assistant-v2"], sums["assistant"], sums["captioner"]}) == 3
    cards = {
        name: json.loads((foundation.location(name) / "pretraining.json").read_text())
        for name in ("assistant-v2", "assistant", "captioner")
    }
    assert cards["assistant-v2"]["config"]["short_captions"] == 0.5
    assert "short_captions" not in cards["assistant"]["config"]  # made before short captions
    assert cards["assistant"]["config"]["question_samples"] > 0
    assert "question_samples" not in cards["captioner"]["config"]  # made before questions existed
    for name, recipe in (("assistant-v2", "pretrain"), ("assistant", "pretrain_assistant")):
        shipped = PretrainConfig(**cards[name]["config"])
        assert load_config(f"configs/{recipe}.yaml", schema=PretrainConfig) == shipped
    for name in cards:
        model, _ = foundation.load(name)
        assert model.config.num_hidden_layers == cards[name]["config"]["num_layers"]


def test_pretraining_questions_ask_only_their_families():
    from fedumm.config import ConfigError

    asked = sw.pretraining_questions(60, "train", 0, ("existence", "color"))
    assert {q.family for q in asked} == {"existence", "color"}
    assert [q.question for q in asked] == [
        q.question for q in sw.pretraining_questions(60, "train", 0, ("existence", "color"))
    ]
    downstream = {(q.image.tobytes(), q.question) for q in sw.vqa_dataset(60, "train", 0)}
    assert len(downstream & {(q.image.tobytes(), q.question) for q in asked}) < 3
    import pytest

    with pytest.raises(ValueError, match=r"unknown question families \['colour'\]"):
        PretrainConfig(question_families=["existence", "colour"])
    with pytest.raises(ConfigError, match="question_families"):
        load_config("configs/pretrain.yaml", ["question_families=[size]"], PretrainConfig)
