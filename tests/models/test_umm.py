import json

import numpy as np
import torch
from transformers import AutoModelForCausalLM

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
    from fedumm.config import PretrainConfig
    from tests.conftest import TINY_PRETRAIN

    pretrain(PretrainConfig(**TINY_PRETRAIN), tmp_path)
    a, _ = foundation.load(tiny_foundation)
    b, _ = foundation.load(tmp_path)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_pretraining_with_caption_matching_reports_its_accuracy(tmp_path):
    from fedumm.config import PretrainConfig
    from tests.conftest import TINY_PRETRAIN

    metrics = pretrain(PretrainConfig(**TINY_PRETRAIN, matching_samples=32), tmp_path)
    card = json.loads((tmp_path / "pretraining.json").read_text())
    assert card["config"]["matching_samples"] == 32
    assert card["metrics"]["caption_matching_accuracy"] == metrics["caption_matching_accuracy"]
    assert 0.0 <= metrics["caption_matching_accuracy"] <= 100.0


def test_missing_foundation_is_a_clear_error(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="no foundation checkpoint"):
        foundation.load(tmp_path / "nope")
