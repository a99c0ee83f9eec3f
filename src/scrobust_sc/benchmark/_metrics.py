"""Scores of one split's predictions, as tidy ``(metric, value)`` pairs."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from scrobust_sc._constants import UNKNOWN_LABEL


def classification_scores(y_true, y_pred) -> dict[str, float]:
    """Macro-F1, accuracy, weighted-F1 and the accuracy of each true type.

    Examples
    --------
    >>> scores = classification_scores(["a", "a", "b"], ["a", "b", "b"])
    >>> round(scores["accuracy"], 3), scores["class_accuracy:a"]
    (0.667, 0.5)
    """
    y_true, y_pred = np.asarray(y_true, dtype=str), np.asarray(y_pred, dtype=str)
    labels = np.unique(y_true)
    scores = {
        "f1_macro": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_weighted": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
    }
    for label in labels:
        scores[f"class_accuracy:{label}"] = float(np.mean(y_pred[y_true == label] == label))
    return scores


def novel_type_scores(y_true, y_pred, rejected, held_out: str, novelty=None) -> dict[str, float]:
    """How well a method says "Unknown" to a type it never saw, and what it costs the others.

    ``unknown_accuracy``: share of the held-out type's cells rejected. ``known_f1_macro``:
    macro-F1 on the other test cells, rejected cells counted as ``"Unknown"`` (wrong);
    ``known_f1_macro_no_rejection``: the same without rejection; ``known_rejected``: share
    of known cells rejected; ``unknown_auroc``: how well ``novelty`` (higher = less like any
    training type) ranks the held-out type's cells above the known ones, whatever the
    threshold (NaN without ``novelty``).

    Examples
    --------
    >>> s = novel_type_scores(["a", "b", "c"], ["a", "b", "a"], [False, False, True], "c")
    >>> s["unknown_accuracy"], s["known_f1_macro"]
    (1.0, 1.0)
    """
    y_true, y_pred = np.asarray(y_true, dtype=str), np.asarray(y_pred, dtype=str)
    rejected = np.asarray(rejected, dtype=bool)
    novel = y_true == held_out
    known = ~novel
    called = np.where(rejected, UNKNOWN_LABEL, y_pred)
    labels = np.unique(y_true[known])

    def macro(pred):
        return float(f1_score(y_true[known], pred[known], labels=labels, average="macro", zero_division=0))

    both = novel.any() and known.any() and novelty is not None
    return {
        "unknown_accuracy": float(rejected[novel].mean()) if novel.any() else float("nan"),
        "unknown_auroc": float(roc_auc_score(novel, np.asarray(novelty, dtype=float))) if both else float("nan"),
        "known_f1_macro": macro(called),
        "known_f1_macro_no_rejection": macro(y_pred),
        "known_rejected": float(rejected[known].mean()) if known.any() else float("nan"),
    }
