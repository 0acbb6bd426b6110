"""VQA accuracy as the official VQA evaluation script computes it (GT-Vision-Lab/VQA,
PythonEvaluationTools/vqaEvaluation/vqaEval.py), in either of its two versions:

- `current` (the default; the script since its 2021 commit "Fixed processing answers bug"):
  where the human answers disagree, the prediction and every human answer are normalised
  (punctuation, then number words to digits, articles dropped, contractions restored); where
  they all agree, the raw strings are compared.
- `original` (the rule before it, which earlier papers were scored with): the prediction is
  always normalised; the human answers, only where they disagree, and only their punctuation.

With VQA v2's ten human answers a prediction scores min(#humans who gave it / 3, 1), averaged
over the ten leave-one-out subsets of nine. With n answers (a data set with fewer or more) the
same average over the n subsets of n - 1 uses min(#matches / min(3, n - 1), 1): ten answers are
scored as the script scores them, and a prediction matching every human answer scores 1 for
any n >= 2. With a single reference answer (ShapesWorld) a question is scored by exact match
after normalisation, under both rules.
"""

from __future__ import annotations

import re
from collections import defaultdict

from fedumm.models.processor import Encoded

NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = {"a", "an", "the"}
# The script's table, whole (its quirks included: "somebody'd" -> "somebodyd").
CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}
RULES = ("current", "original")
PUNCTUATION = [
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
]
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


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(answer: str) -> str:
    """An answer as the script normalises it before comparing (punctuation, then words)."""
    return process_digit_article(process_punctuation(_clean(answer)))


def vqa_score(prediction: str, answers: list[str], rule: str = "current") -> float:
    """One question's score in [0, 1] against its reference answers, by `rule` (the module doc
    says what each does)."""
    if rule not in RULES:
        raise ValueError(f"unknown VQA metric {rule!r}; metrics: {', '.join(RULES)}")
    if len(answers) == 1:
        return float(normalize_answer(prediction) == normalize_answer(answers[0]))
    humans = [_clean(a) for a in answers]
    agree = len(set(humans)) == 1
    if rule == "original":
        predicted = normalize_answer(prediction)
        if not agree:
            humans = [process_punctuation(a) for a in humans]
    else:
        predicted = _clean(prediction)
        if not agree:
            humans = [normalize_answer(a) for a in humans]
            predicted = normalize_answer(predicted)
    needed = min(3, len(humans) - 1)
    subsets = [humans[:i] + humans[i + 1 :] for i in range(len(humans))]
    return sum(min(1.0, subset.count(predicted) / needed) for subset in subsets) / len(subsets)


def vqa_accuracy(
    predictions: list[str],
    answers: list[str | list[str]],
    families: list[str],
    rule: str = "current",
) -> dict:
    """Overall and per-family accuracy in percent, plus the count of questions. An answer is one
    string or the list of the humans' answers; `rule`: the script's version."""
    if not (len(predictions) == len(answers) == len(families)):
        raise ValueError("predictions, answers and families must have the same length")
    hits: dict[str, list[float]] = defaultdict(list)
    for pred, ans, fam in zip(predictions, answers, families):
        hits[fam].append(vqa_score(pred, [ans] if isinstance(ans, str) else ans, rule))
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
