"""Long-tailed visual relationship recognition (GQA-LT) metrics: average per-class top-1 accuracy in
frequency bands (many / medium / few), for subjects+objects and relations, in PERCENT.

Bands: the classes present in the test ground truth are sorted ascending by training count (missing
from `train_counts` = 0; ties by class id). With n such classes, i1 = floor(0.80 n), i2 = floor(0.95 n)
(for cutoffs (0.80, 0.95)): the first i1 classes are `few`, the next i2 - i1 `medium`, the last n - i2
`many`. A band's score is the unweighted mean, over its classes, of each class's accuracy (correct test
examples of that class / its test examples); `all` is that mean over all n classes. An empty band (few
classes) scores NaN. With `synonyms` (class -> synset key), a prediction is correct when its synset equals
the ground truth's (classes missing from the map only match themselves).
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from components.errors import DataError, InputError
from components.evaluation.validate import check_labels

BANDS = ("many", "medium", "few")


def band_edges(n: int, cutoffs: Sequence[float] = (0.80, 0.95)) -> tuple[int, int]:
    """(i1, i2): classes ranked [0, i1) are few, [i1, i2) medium, [i2, n) many (floor, float-safe)."""
    lo, hi = (float(c) for c in cutoffs)
    if not 0.0 <= lo <= hi <= 1.0:
        raise InputError("cutoffs", f"{tuple(cutoffs)}", "two fractions 0 <= few cutoff <= medium cutoff <= 1")
    return math.floor(lo * n + 1e-9), math.floor(hi * n + 1e-9)


def correct_mask(gt: np.ndarray, pred: np.ndarray, synonyms: Mapping[int, Hashable] | None = None) -> np.ndarray:
    """Per-example correctness: equal class ids, or (with `synonyms`) equal synset keys."""
    if synonyms is None:
        return gt == pred
    classes, inv = np.unique(np.concatenate([gt, pred]), return_inverse=True)
    keys: dict = {}
    code = np.array([keys.setdefault(synonyms.get(int(c), ("class", int(c))), len(keys)) for c in classes])
    return code[inv[: len(gt)]] == code[inv[len(gt):]]


def per_class_accuracy(gt, pred, train_counts: Mapping[int, int], cutoffs: Sequence[float] = (0.80, 0.95),
                       synonyms: Mapping[int, Hashable] | None = None, where: str = "labels") -> dict:
    """many/medium/few/all mean per-class top-1 accuracy (percent), per-class details and per-example hits."""
    gt, pred = check_labels(gt, pred, where)
    if len(gt) == 0:
        raise DataError(where, "is empty", "at least one test example")
    counts = {int(k): int(v) for k, v in train_counts.items()}
    correct = correct_mask(gt, pred, synonyms)
    classes, inv = np.unique(gt, return_inverse=True)
    acc = 100.0 * np.bincount(inv, weights=correct) / np.bincount(inv)
    train = np.array([counts.get(int(c), 0) for c in classes], dtype=np.int64)
    order = np.lexsort((classes, train))  # ascending training count, ties by class id
    i1, i2 = band_edges(len(classes), cutoffs)
    band = np.empty(len(classes), dtype=object)
    band[order[:i1]], band[order[i1:i2]], band[order[i2:]] = "few", "medium", "many"
    out = {b: float(acc[band == b].mean()) if (band == b).any() else float("nan") for b in BANDS}
    out.update(all=float(acc.mean()), per_example=correct, classes=classes[order].tolist(),
               class_accuracy=acc[order].tolist(), class_band=band[order].tolist(),
               class_train_count=train[order].tolist())
    return out


def _summary(r: Mapping) -> dict:
    return {k: r[k] for k in BANDS + ("all",)}


def ltvrr_report(gt_sbj, pred_sbj, gt_obj, pred_obj, gt_rel, pred_rel, obj_train_counts: Mapping[int, int],
                 rel_train_counts: Mapping[int, int], synonyms: Mapping[int, Hashable] | None = None,
                 rel_synonyms: Mapping[int, Hashable] | None = None,
                 cutoffs: Sequence[float] = (0.80, 0.95)) -> dict:
    """GQA-LT report: sbj_obj (band-wise mean of subject and object), rel, and combined = (S/O all + R all)/2.

    Subjects and objects are banded separately, each over the classes present in its own role in the test
    GT (ranked by the same object-class training counts), so a class may fall in different bands as subject
    and as object; REFERENCE.md leaves this open.

    `synonyms` applies to subject/object classes, `rel_synonyms` to relation classes.
    """
    sbj = per_class_accuracy(gt_sbj, pred_sbj, obj_train_counts, cutoffs, synonyms, "subjects")
    obj = per_class_accuracy(gt_obj, pred_obj, obj_train_counts, cutoffs, synonyms, "objects")
    rel = per_class_accuracy(gt_rel, pred_rel, rel_train_counts, cutoffs, rel_synonyms, "relations")
    if not len(sbj["per_example"]) == len(obj["per_example"]) == len(rel["per_example"]):
        raise DataError("LTVRR predictions", "subject, object and relation arrays differ in length",
                        "one subject, object and relation per test triplet")
    sbj_obj = {k: (sbj[k] + obj[k]) / 2.0 for k in BANDS + ("all",)}
    return {"sbj_obj": sbj_obj, "rel": _summary(rel), "combined": (sbj_obj["all"] + rel["all"]) / 2.0,
            "sbj": _summary(sbj), "obj": _summary(obj), "num_examples": len(rel["per_example"])}
