"""GenEval-style prompts (GenEval's metadata format) and the ShapesWorld scorer."""

import json

import numpy as np
import pytest

from fedumm.data import geneval
from fedumm.data import shapesworld as sw
from fedumm.data.geneval import GenEvalPrompt, MetadataError
from fedumm.evaluation.detection import Detection
from fedumm.evaluation.geneval import ShapesWorldParser, judge, relative_position

OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def _everything() -> list[GenEvalPrompt]:
    return [p for tag in geneval.TAGS for p in geneval.all_prompts(tag)]


def _mutate(prompt: GenEvalPrompt) -> GenEvalPrompt:
    """A different prompt that an image of `prompt`'s objects (and nothing else) cannot satisfy."""
    raw = json.loads(json.dumps(prompt.to_json()))
    include, last = raw["include"], raw["include"][-1]
    if prompt.tag == "counting":
        n = last["count"] + 1 if last["count"] < 4 else last["count"] - 1
        last["count"], raw["exclude"][0]["count"] = n, n + 1
    elif "color" in last:
        last["color"] = next(c for c in sw.COLORS if c != last["color"])
    elif "position" in last:
        last["position"][0] = OPPOSITE[last["position"][0]]
    else:  # single_object, two_object: ask for the shape that is not drawn
        drawn = {item["class"] for item in include}
        last["class"] = next(s for s in sw.SHAPES if s not in drawn)
    return GenEvalPrompt(raw["tag"], "mutated", raw["include"], raw.get("exclude", []))


def test_prompt_space_follows_genevals_templates():
    sizes = {tag: len(geneval.all_prompts(tag)) for tag in geneval.TAGS}
    assert sizes == {
        "single_object": 3,
        "two_object": 6,
        "counting": 9,
        "colors": 18,
        "position": 24,
        "color_attr": 216,
    }
    pos = geneval.all_prompts("position")[0].to_json()
    assert pos == {
        "tag": "position",
        "include": [
            {"class": "circle", "count": 1},
            {"class": "square", "count": 1, "position": ["left of", 0]},
        ],
        "prompt": "a photo of a square left of a circle",
    }
    count = geneval.all_prompts("counting")[0].to_json()
    assert count["exclude"] == [{"class": "circle", "count": 3}]
    assert count["prompt"] == "a photo of two circles"
    picked = geneval.evaluation_prompts(5, seed=0)
    assert [p.tag for p in picked].count("single_object") == 3  # only 3 exist
    assert [p.tag for p in picked].count("color_attr") == 5
    assert picked == geneval.evaluation_prompts(5, seed=0) != geneval.evaluation_prompts(5, 1)


def test_scorer_is_right_on_rendered_prompts_and_wrong_on_other_prompts():
    parser, rng = ShapesWorldParser(), np.random.default_rng(0)
    right = wrong = total = 0
    for prompt in _everything():
        for _ in range(3):
            image = sw.render(geneval.scene_for(prompt, rng))
            found = parser(image)
            right += judge(prompt, found)[0]
            wrong += judge(_mutate(prompt), found)[0]
            total += 1
    assert total == 3 * 276
    assert right / total >= 0.99, f"scorer says only {right}/{total} ground-truth images are right"
    assert wrong == 0, f"scorer accepted {wrong} images drawn for another prompt"


def test_parser_reads_every_object_of_a_scene():
    parser, rng = ShapesWorldParser(), np.random.default_rng(1)
    for _ in range(200):
        scene = sw.sample_scene(rng)
        found = {(d.cls, d.color, d.box[0], d.box[1]) for d in parser(sw.render(scene))}
        truth = {
            (o.shape, o.color, o.col * sw.CELL + o.dx, o.row * sw.CELL + o.dy)
            for o in scene.objects
        }
        assert found == truth


def test_relative_position_is_genevals_box_rule():
    a = Detection("circle", None, (0, 0, 6, 6))
    assert relative_position(a, Detection("square", None, (8, 0, 14, 6))) == {"left of"}
    assert relative_position(a, Detection("square", None, (0, 16, 6, 22))) == {"above"}
    # diagonal at 45 degrees: both components are 0.707 > 0.5 after the margin
    assert relative_position(a, Detection("square", None, (24, 24, 30, 30))) == {"left of", "above"}
    assert relative_position(a, Detection("square", None, (1, 0, 7, 6))) == set()  # within margin


def test_judge_counts_colours_and_excludes():
    two = geneval.all_prompts("counting")[0]  # two circles, fewer than three
    circle = lambda x, color="red": Detection("circle", color, (x, 0, x + 6, 6))  # noqa: E731
    assert judge(two, [circle(0), circle(8)])[0]
    ok, why = judge(two, [circle(0), circle(8), circle(16)])
    assert not ok and "circle < 3" in why
    red = GenEvalPrompt(
        "colors", "a photo of a red circle", [{"class": "circle", "count": 1, "color": "red"}]
    )
    assert judge(red, [circle(0, "blue"), circle(8, "red")])[0]  # the red one is taken
    ok, why = judge(red, [circle(0, "blue")])
    assert not ok and "expected red circle" in why


def test_metadata_round_trip_and_official_lines(tmp_path):
    path = tmp_path / "prompts.jsonl"
    prompts = geneval.evaluation_prompts(3, seed=0)
    geneval.write_metadata(prompts, path)
    assert geneval.read_metadata(path) == prompts
    official = tmp_path / "evaluation_metadata.jsonl"
    official.write_text(
        '{"tag": "single_object", "include": [{"class": "circle", "count": 1}], '
        '"prompt": "a photo of a circle"}\n'
        '{"tag": "colors", "include": [{"class": "car", "count": 1, "color": "pink"}], '
        '"prompt": "a photo of a pink car"}\n'
    )
    read = geneval.read_metadata(official)  # the format is GenEval's: it reads
    with pytest.raises(MetadataError, match=r"evaluation_metadata.jsonl:2: class 'car' cannot"):
        geneval.check_drawable(read)
    official.write_text(official.read_text().replace('"car"', '"square"'))
    with pytest.raises(MetadataError, match=r":2: color 'pink' cannot be drawn"):
        geneval.check_drawable(geneval.read_metadata(official))


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", ":1: not valid JSON"),
        (
            '{"tag": "shapes", "include": [{"class": "circle", "count": 1}], "prompt": "x"}',
            ":1: unknown tag 'shapes'; known: single_object",
        ),
        ('{"tag": "colors", "prompt": "x"}', ":1: missing key 'include'"),
        (
            '{"tag": "counting", "include": [{"class": "circle", "count": 0}], "prompt": "x"}',
            r":1: include\[0\] needs a 'count' >= 1",
        ),
        (
            '{"tag": "position", "include": [{"class": "circle", "count": 1}, {"class": "square", '
            '"count": 1, "position": ["near", 0]}], "prompt": "x"}',
            r":1: include\[1\].position must be",
        ),
    ],
)
def test_malformed_metadata_names_the_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(MetadataError, match=message):
        geneval.read_metadata(path)


class SeesNothing:
    """A stand-in for a real detector plugged in by name: it finds no object."""

    classes = frozenset(sw.SHAPES)
    colors = frozenset(sw.COLORS)

    def __call__(self, image):
        return []


def test_a_detector_plugs_in_by_name_and_a_bad_one_is_named(tiny_foundation, tmp_path):
    from fedumm.evaluation.geneval import load_detector
    from tests.tiny import run_tiny

    assert isinstance(load_detector("shapesworld"), ShapesWorldParser)
    assert isinstance(load_detector("tests.evaluation.test_geneval:SeesNothing"), SeesNothing)
    out = tmp_path / "run"
    result = run_tiny(
        out,
        tiny_foundation,
        "data.tasks=[generation]",
        "baselines.local=false",
        "eval.detector=tests.evaluation.test_geneval:SeesNothing",
    )
    assert result.exit_code == 0, result.output
    final = json.loads((out / "results.json").read_text())["final"]["metrics"]
    assert final["geneval_overall"] == 0.0  # nothing detected: every include entry fails
    for spec, message in [
        ("nope", "expected 'shapesworld', 'photo' or 'package.module:Name'"),
        ("tests.evaluation.test_geneval:Missing", "cannot be loaded"),
        ("no_such_module:X", "cannot be loaded"),
    ]:
        result = run_tiny(
            tmp_path / spec, tiny_foundation, "data.tasks=[generation]", f"eval.detector={spec}"
        )
        assert result.exit_code == 1 and message in result.output, result.output
        assert not (tmp_path / spec / "results.json").exists()
