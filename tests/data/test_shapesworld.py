import numpy as np
import pytest

from fedumm.data import shapesworld as sw


def test_same_seed_same_data_other_seed_other_data():
    a = sw.vqa_dataset(60, "train", seed=3)
    b = sw.vqa_dataset(60, "train", seed=3)
    c = sw.vqa_dataset(60, "train", seed=4)
    assert [(s.question, s.answer) for s in a] == [(s.question, s.answer) for s in b]
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    assert [(s.question, s.answer) for s in a] != [(s.question, s.answer) for s in c]


def test_train_and_test_scenes_are_disjoint():
    rng = np.random.default_rng(0)
    scenes = [sw.sample_scene(rng) for _ in range(3000)]
    train = {s.key() for s in scenes if s.split() == "train"}
    test = {s.key() for s in scenes if s.split() == "test"}
    assert train and test and not train & test
    assert 0.08 < len(test) / (len(train) + len(test)) < 0.25


def test_every_family_present_in_equal_shares_and_answers_are_short():
    data = sw.vqa_dataset(120, "test", seed=0)
    families = [s.family for s in data]
    assert {f: families.count(f) for f in sw.FAMILIES} == {f: 20 for f in sw.FAMILIES}
    assert all(len(s.answer.split()) == 1 for s in data)


def test_answers_are_true_of_the_scene():
    rng = np.random.default_rng(1)
    for _ in range(200):
        scene = sw.sample_scene(rng)
        q, a = sw.make_question(scene, "count", rng)
        if q == "how many objects are there?":
            assert a == str(len(scene.objects))
        qa = sw.make_question(scene, "existence", rng)
        color, shape = qa[0].removeprefix("is there a ").removesuffix("?").split()
        present = any(o.color == color and o.shape == shape for o in scene.objects)
        assert qa[1] == ("yes" if present else "no")


def test_jitter_changes_pixels_not_content():
    a = sw.Scene((sw.Obj("circle", "red", 1, 2, dy=0, dx=0),))
    b = sw.Scene((sw.Obj("circle", "red", 1, 2, dy=1, dx=1),))
    assert a.key() == b.key()
    assert not np.array_equal(sw.render(a), sw.render(b))


def test_render_draws_each_object_in_its_colour_and_cell():
    scene = sw.Scene((sw.Obj("square", "blue", 0, 3), sw.Obj("triangle", "yellow", 2, 0)))
    img = sw.render(scene)
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    cell = img[0:8, 24:32].reshape(-1, 3)
    assert (cell == sw.COLORS["blue"]).all(1).sum() == sw.SHAPE_SIZE**2
    assert (img[16:24, 0:8].reshape(-1, 3) == sw.COLORS["yellow"]).all(1).any()
    assert (img[8:16].reshape(-1, 3) == sw.BACKGROUND).all()


def test_caption_and_relation():
    scene = sw.Scene((sw.Obj("square", "blue", 0, 3), sw.Obj("circle", "red", 0, 0)))
    assert sw.caption(scene) == (
        "a red circle and a blue square. 2 objects. the red circle is left of the blue square."
    )
    assert sw.caption(sw.Scene((sw.Obj("circle", "red", 0, 0),))) == "a red circle. 1 object."
    a, b = scene.objects
    assert sw.relation(a, b) == "right" and sw.relation(b, a) == "left"
    assert sw.relation(sw.Obj("circle", "red", 1, 1), sw.Obj("circle", "red", 2, 2)) is None


def test_short_caption_groups_objects_and_counts_in_words():
    scene = sw.Scene(
        (
            sw.Obj("circle", "red", 0, 0),
            sw.Obj("square", "blue", 0, 3),
            sw.Obj("circle", "red", 2, 1),
            sw.Obj("circle", "green", 3, 3),
        )
    )
    assert sw.short_caption(scene, with_colors=True) == (
        "two red circles, a blue square and a green circle."
    )
    assert sw.short_caption(scene, with_colors=False) == "three circles and a square."
    one = sw.Scene((sw.Obj("triangle", "purple", 1, 1),))
    assert sw.short_caption(one, with_colors=False) == "a triangle."


def test_mixed_captions_replace_about_their_share_and_are_seeded():
    scenes = sw.caption_scenes(400, "train", 0)
    dense = [sw.caption(s) for s in scenes]
    assert sw.mixed_captions(scenes, 0.0, 0, "train") == dense
    mixed = sw.mixed_captions(scenes, 0.5, 0, "train")
    assert mixed == sw.mixed_captions(scenes, 0.5, 0, "train")
    short = [m != d for m, d in zip(mixed, dense)]
    assert 0.4 < np.mean(short) < 0.6
    for scene, text, is_short in zip(scenes, mixed, short):
        if is_short:
            assert text in (sw.short_caption(scene, True), sw.short_caption(scene, False))
    colorless = [t for t, s in zip(mixed, short) if s and not any(c in t for c in sw.COLORS)]
    assert 0.3 < len(colorless) / sum(short) < 0.7


def test_caption_matching_pairs_half_true_half_one_attribute_off():
    pairs = sw.caption_matching_dataset(40, "train", seed=0)
    scenes = sw._scenes(0, "train", 40, stream=7)
    assert [p.answer for p in pairs] == ["yes", "no"] * 20
    for pair, scene in zip(pairs, scenes):
        truth = sw.caption(scene)
        if pair.answer == "yes":
            assert pair.question == truth
        else:  # the same words but for colours or shapes
            said, true = (
                text.replace(",", "").replace(".", "").split() for text in (pair.question, truth)
            )
            assert pair.question != truth and len(said) == len(true)
            assert {w for w, t in zip(said, true) if w != t} <= {*sw.COLORS, *sw.SHAPES}


def test_unknown_family_is_refused():
    with pytest.raises(ValueError, match="unknown question family 'colour'"):
        sw.make_question(
            sw.sample_scene(np.random.default_rng(0)), "colour", np.random.default_rng(0)
        )
