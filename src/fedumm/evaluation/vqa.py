"""VQA accuracy: exact match after the official VQA answer normalisation.

Normalisation follows the official VQA evaluation script (lower case, punctuation, number words
to digits, articles dropped, common contractions restored), so "Two." and "2" are the same answer.
With one reference answer per question (ShapesWorld), the official min(#matches/3, 1) averaged over
leave-one-out subsets reduces to exact match; VQA v2's ten human answers arrive with real data.
"""

from __future__ import annotations

import re
from collections import defaultdict

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


def normalize_answer(answer: str) -> str:
    text = answer.replace("\n", " ").replace("\t", " ").strip().lower()
    for p in PUNCTUATION:  # as the official script: drop next to spaces, else split words
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text):
            text = text.replace(p, "")
        else:
            text = text.replace(p, " ")
    text = _PERIOD_STRIP.sub("", text)
    words = []
    for word in text.split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def vqa_accuracy(predictions: list[str], answers: list[str], families: list[str]) -> dict:
    """Overall and per-family accuracy in percent, plus the count of questions."""
    if not (len(predictions) == len(answers) == len(families)):
        raise ValueError("predictions, answers and families must have the same length")
    hits: dict[str, list[bool]] = defaultdict(list)
    for pred, ans, fam in zip(predictions, answers, families):
        hits[fam].append(normalize_answer(pred) == normalize_answer(ans))
    every = [h for fam in hits.values() for h in fam]
    return {
        "vqa_accuracy": 100.0 * sum(every) / max(len(every), 1),
        "per_family": {f: 100.0 * sum(h) / len(h) for f, h in sorted(hits.items())},
        "num_questions": len(every),
    }


def answer_questions(model, processor, prompts: list[list[int]], batch_size: int) -> list[str]:
    """Greedy short answers (text tokens only) for already-encoded understanding prompts."""
    from fedumm.models.generate import generate

    answers: list[str] = []
    for i in range(0, len(prompts), batch_size):
        out = generate(model, prompts[i : i + batch_size], max_new_tokens=4,
                       allowed=processor.text_id_range, pad_id=processor.pad,
                       stop_id=processor.eos)  # fmt: skip
        answers.extend(processor.decode_text(ids) for ids in out)
    return answers
