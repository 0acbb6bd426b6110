"""The headline metrics a run reports, and how per-client results are summarised.

A run scores VQA, generation, classification or a mix; everything that prints or plots results
(report, CLI, sweep) asks `headlines` which are present instead of assuming one.
"""

from __future__ import annotations

import numpy as np

# headline key -> (label, key of its per-category breakdown, what a category is)
HEADLINES = {
    "vqa_accuracy": ("VQA accuracy (%)", "per_family", "question family"),
    "geneval_overall": ("GenEval overall (%)", "geneval_per_tag", "GenEval tag"),
    "classification_accuracy": ("Classification accuracy (%)", "per_class_recall", "class"),
    "classification_macro_f1": ("Classification macro F1 (%)", "per_class_f1", "class"),
    "classification_auc": ("Classification AUC (%)", "per_class_auc", "class"),
}


def headlines(metrics: dict) -> list[str]:
    """The headline keys present in `metrics`, in a fixed order."""
    return [k for k in HEADLINES if k in metrics]


def spread(per_client: list[dict]) -> dict:
    """Each headline's mean, std, min and max over clients, and the mean of each breakdown."""
    first = per_client[0]["metrics"]
    out: dict = {}
    for key in headlines(first):
        values = [c["metrics"][key] for c in per_client]
        out[key] = float(np.mean(values))
        out[f"{key}_std"] = float(np.std(values))
        out[f"{key}_min"] = float(np.min(values))
        out[f"{key}_max"] = float(np.max(values))
        breakdown = HEADLINES[key][1]
        out[breakdown] = {
            cat: float(np.mean([c["metrics"][breakdown][cat] for c in per_client]))
            for cat in first[breakdown]
        }
    return out
