import numpy as np

from fedumm.data import shapesworld as sw
from fedumm.models.image_tokenizer import PatchVQ, fit_codebook, from_patches, to_patches
from fedumm.models.text_tokenizer import train_text_tokenizer


def test_any_utf8_text_round_trips_and_saves(tmp_path):
    tok = train_text_tokenizer(sw.text_corpus(0, n=200), 300)
    for text in ["is there a red circle?", "Ünïcödé ✓ 形状は何ですか 🟥", "tab\tand\nnewline"]:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids).strip() == text.strip()
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert again.encode("a blue square", add_special_tokens=False) == tok.encode(
        "a blue square", add_special_tokens=False
    )
    assert {"<bos>", "<eos>", "<sep>", "<boi>", "<eoi>", "<pad>"} <= set(again.get_vocab())


def test_patches_round_trip():
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    assert np.array_equal(from_patches(to_patches(images, 8), 8, 4), images)


def test_codebook_reconstructs_shapesworld_exactly():
    train = np.stack([s.image for s in sw.caption_dataset(300, "train", 0)])
    test = np.stack([s.image for s in sw.caption_dataset(100, "test", 0)])
    vq = PatchVQ(__import__("torch").from_numpy(fit_codebook(train, 8, 256, seed=0)), 8, 4)
    codes = vq.encode(test)
    assert codes.shape == (100, 16)
    assert np.array_equal(vq.decode(codes), test)


def test_small_codebook_is_lossy_but_kmeans_beats_its_seeding():
    train = np.stack([s.image for s in sw.caption_dataset(200, "train", 0)])
    torch = __import__("torch")
    few = PatchVQ(torch.from_numpy(fit_codebook(train, 8, 8, seed=0, iters=0)), 8, 4)
    fitted = PatchVQ(torch.from_numpy(fit_codebook(train, 8, 8, seed=0, iters=10)), 8, 4)
    assert fitted.size == 8

    def error(vq):
        return np.abs(vq.decode(vq.encode(train)).astype(float) - train).mean()

    assert 0 < error(fitted) < error(few)
