"""Classification by a generative model: class scores from label-token probabilities, and
accuracy, macro F1 and AUC computed from them.

The model answers in words, so a class's score is the probability of its label tokens (and the
end of the answer) after the prompt, normalised over the classes. AUC needs scores, not hard
predictions (FedMLLM's code computed it from predicted labels, which makes it a function of
accuracy); with more than two classes it is the macro mean of one-vs-rest AUCs.
"""

from __future__ import annotations

import numpy as np
import torch

from fedumm.models.processor import IGNORE, Encoded
from fedumm.runtime import model_device, to_device


@torch.no_grad()
def class_scores(
    model, processor, prompts: list[Encoded], classes: list[str], batch_size: int
) -> np.ndarray:
    """(len(prompts), len(classes)) probabilities: softmax over the classes of
    log p(label tokens, <eos> | prompt)."""
    answers = [[*processor.text_ids(c), processor.eos] for c in classes]
    sequences = [p.continued(a) for p in prompts for a in answers]
    log_p = []
    was_training = model.training
    model.eval()
    device = model_device(model)
    for i in range(0, len(sequences), batch_size):
        batch = to_device(processor.collate(sequences[i : i + batch_size]), device)
        targets = batch.pop("labels")[:, 1:]
        logits = model(**batch).logits
        token_lp = torch.log_softmax(logits[:, :-1].float(), -1)
        picked = token_lp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        log_p.append((picked * (targets != IGNORE)).sum(-1))
    model.train(was_training)
    joint = torch.cat(log_p).view(len(prompts), len(classes))
    return torch.softmax(joint, -1).cpu().numpy()


def rankdata(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties given the mean of the ranks they span."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def one_vs_rest_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counting half
    (the Mann-Whitney U statistic); NaN when either side is empty."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_metrics(scores: np.ndarray, labels: list[str], classes: list[str]) -> dict:
    """Accuracy, macro F1 and macro one-vs-rest AUC in percent, with per-class breakdowns
    (recall, F1, AUC). `scores` is (N, C), columns in the order of `classes`."""
    if scores.shape != (len(labels), len(classes)):
        raise ValueError(
            f"scores have shape {scores.shape}, expected ({len(labels)}, {len(classes)})"
        )
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the classes {classes}")
    truth = np.array([classes.index(label) for label in labels])
    predicted = scores.argmax(1)
    recall, f1, auc = {}, {}, {}
    for c, name in enumerate(classes):
        tp = int(np.sum((predicted == c) & (truth == c)))
        fp = int(np.sum((predicted == c) & (truth != c)))
        fn = int(np.sum((predicted != c) & (truth == c)))
        recall[name] = 100.0 * tp / (tp + fn) if tp + fn else float("nan")
        f1[name] = 100.0 * 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
        auc[name] = 100.0 * one_vs_rest_auc(scores[:, c], truth == c)
    return {
        "classification_accuracy": 100.0 * float(np.mean(predicted == truth)),
        "classification_macro_f1": float(np.nanmean(list(f1.values()))),
        "classification_auc": float(np.nanmean(list(auc.values()))),
        "per_class_recall": recall,
        "per_class_f1": f1,
        "per_class_auc": auc,
        "classification_num_samples": len(labels),
    }
