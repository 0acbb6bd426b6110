"""VQA accuracy as the official VQA evaluation script computes it.

Answers are normalised as the script does (punctuation, number words to digits, articles dropped,
common contractions restored), so "Two." and "2" are the same answer. With VQA v2's ten human
answers a prediction scores min(#humans who gave it / 3, 1), averaged over the ten leave-one-out
subsets of nine; the script normalises the human answers' punctuation only where they disagree.
With a single reference answer (ShapesWorld) a question is scored by exact match after
normalisation: the leave-one-out formula would leave no reference to match.
"""

from __future__ import annotations

import re
from collections import defaultdict

from fedumm.models.processor import Encoded

NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = {"a", "an", "the"}
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "didnt": "didn't",
    "doesnt": "doesn't", "dont": "don't", "hasnt": "hasn't", "havent": "haven't", "isnt": "isn't",
    "itll": "it'll", "shouldnt": "shouldn't", "thats": "that's", "wasnt": "wasn't",
    "werent": "weren't", "whats": "what's", "wont": "won't", "wouldnt": "wouldn't",
    "youre": "you're",
}  # fmt: skip
PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
               "@", "`", ",", "?", "!"]  # fmt: skip
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def process_punctuation(text: str) -> str:
    """The script's punctuation rule: a mark next to a space (or any mark in a text with a
    thousands comma) is dropped, otherwise it becomes a space; periods not in numbers go."""
    out = text
    for p in PUNCTUATION:  # the conditions look at the original text, as the script does
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def process_digit_article(text: str) -> str:
    """Lower case; number words to digits; articles dropped; contractions restored."""
    words = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalize_answer(answer: str) -> str:
    """A predicted answer as the script normalises it before comparing."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def vqa_score(prediction: str, answers: list[str]) -> float:
    """One question's score in [0, 1] against its reference answers (see the module doc)."""
    predicted = normalize_answer(prediction)
    if len(answers) == 1:
        return float(predicted == normalize_answer(answers[0]))
    humans = [a.replace("\n", " ").replace("\t", " ").strip() for a in answers]
    if len(set(humans)) > 1:
        humans = [process_punctuation(a) for a in humans]
    subsets = [humans[:i] + humans[i + 1 :] for i in range(len(humans))]
    return sum(min(1.0, subset.count(predicted) / 3) for subset in subsets) / len(subsets)


def vqa_accuracy(
    predictions: list[str], answers: list[str | list[str]], families: list[str]
) -> dict:
    """Overall and per-family accuracy in percent, plus the count of questions. An answer is one
    string or the list of the humans' answers."""
    if not (len(predictions) == len(answers) == len(families)):
        raise ValueError("predictions, answers and families must have the same length")
    hits: dict[str, list[float]] = defaultdict(list)
    for pred, ans, fam in zip(predictions, answers, families):
        hits[fam].append(vqa_score(pred, [ans] if isinstance(ans, str) else ans))
    every = [h for fam in hits.values() for h in fam]
    return {
        "vqa_accuracy": 100.0 * sum(every) / max(len(every), 1),
        "per_family": {f: 100.0 * sum(h) / len(h) for f, h in sorted(hits.items())},
        "num_questions": len(every),
    }


def answer_questions(model, processor, prompts: list[Encoded], batch_size: int) -> list[str]:
    """Greedy short answers for understanding prompts (the processor decodes as its model
    needs: text tokens only for the UMM, `generate` for a Hugging Face model)."""
    answers: list[str] = []
    for i in range(0, len(prompts), batch_size):
        out = processor.answer(model, prompts[i : i + batch_size], max_new_tokens=4)
        answers.extend(processor.decode_text(ids) for ids in out)
    return answers
