"""Checks for evaluation inputs (per-image SGG predictions, LTVRR label arrays): one clear DataError each."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from components.errors import DataError

SGG_KEYS = ("gt_boxes", "gt_labels", "gt_rels", "pred_boxes", "pred_labels", "pred_scores", "rel_pairs", "rel_scores")
_INT_KEYS = ("gt_labels", "gt_rels", "pred_labels", "rel_pairs")
_SCORE_KEYS = ("pred_scores", "rel_scores")


def _array(image: Mapping, key: str, where: str, width: int | None) -> np.ndarray:
    """`image[key]` as an array of shape (n,) (width None) or (n, width); empty input of any shape is accepted."""
    a = np.asarray(image[key])
    if a.size == 0:
        return np.zeros((0,) if width is None else (0, width), dtype=np.int64 if key in _INT_KEYS else np.float64)
    want = "(n,)" if width is None else f"(n, {width})"
    if (width is None and a.ndim != 1) or (width is not None and (a.ndim != 2 or a.shape[1] != width)):
        raise DataError(f"{where}: {key}", f"shape {a.shape}", f"shape {want}")
    if key in _INT_KEYS:
        if a.dtype.kind not in "iub":
            raise DataError(f"{where}: {key}", f"dtype {a.dtype}", "an integer array")
        return a.astype(np.int64, copy=False)
    if a.dtype.kind not in "iuf":
        raise DataError(f"{where}: {key}", f"dtype {a.dtype}", "a real-valued array")
    lo, hi = a.min(), a.max()
    if not (np.isfinite(lo) and np.isfinite(hi)):  # NaN propagates through min/max
        raise DataError(f"{where}: {key}", "contains NaN or infinite values", "finite numbers")
    if key in _SCORE_KEYS and lo < 0:
        raise DataError(f"{where}: {key}", "has negative scores", "probabilities >= 0 (apply softmax to logits)")
    return a if key == "rel_scores" and a.dtype in (np.float32, np.float64) else a.astype(np.float64, copy=False)


def _check_index(a: np.ndarray, hi: int, where: str, what: str) -> None:
    if a.size and (a.min() < 0 or a.max() >= hi):
        raise DataError(where, f"{what} out of range [{a.min()}, {a.max()}]", f"indices in 0..{hi - 1}")


def _check_boxes(b: np.ndarray, where: str) -> None:
    if b.size and (b[:, 2:] < b[:, :2]).any():
        raise DataError(where, "has boxes with x2 < x1 or y2 < y1", "xyxy boxes")


def check_sgg_image(image: Mapping, where: str, num_predicates: int | None = None) -> dict[str, np.ndarray]:
    """Validated int64/float64 arrays of the eight SGG keys (rel_scores may stay float32: converting it costs
    more than the metric); `num_predicates` C fixes rel_scores' width to C+1."""
    if not isinstance(image, Mapping):
        raise DataError(where, f"is a {type(image).__name__}", f"a mapping with keys {list(SGG_KEYS)}")
    missing = [k for k in SGG_KEYS if k not in image]
    if missing:
        raise DataError(where, f"missing keys {missing}", f"all of {list(SGG_KEYS)}")
    a = {k: _array(image, k, where, w) for k, w in (
        ("gt_boxes", 4), ("gt_labels", None), ("gt_rels", 3), ("pred_boxes", 4), ("pred_labels", None),
        ("pred_scores", None), ("rel_pairs", 2))}
    width = None if num_predicates is None else num_predicates + 1
    rs = np.asarray(image["rel_scores"])
    if rs.size == 0:
        a["rel_scores"] = np.zeros((0, width or 0))
    else:
        if rs.ndim != 2 or rs.shape[1] < 2 or (width is not None and rs.shape[1] != width):
            raise DataError(f"{where}: rel_scores", f"shape {rs.shape}",
                            f"shape (R, {width if width else 'C+1'}) with column 0 = background")
        a["rel_scores"] = _array(image, "rel_scores", where, rs.shape[1])
    n, p, r = len(a["gt_boxes"]), len(a["pred_boxes"]), len(a["rel_pairs"])
    for key, want in (("gt_labels", n), ("pred_labels", p), ("pred_scores", p), ("rel_scores", r)):
        if len(a[key]) != want:
            raise DataError(f"{where}: {key}", f"has {len(a[key])} rows", f"{want} (one per box or pair)")
    _check_boxes(a["gt_boxes"], f"{where}: gt_boxes")
    _check_boxes(a["pred_boxes"], f"{where}: pred_boxes")
    _check_index(a["gt_rels"][:, :2], n, f"{where}: gt_rels", "subject/object index")
    _check_index(a["rel_pairs"], p, f"{where}: rel_pairs", "box index")
    if num_predicates is not None:
        _check_index(a["gt_rels"][:, 2] - 1, num_predicates, f"{where}: gt_rels predicate (1-based)", "predicate - 1")
    return a


def check_labels(gt: np.ndarray, pred: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Two equally long 1-D integer label arrays (ground truth and top-1 prediction)."""
    out = []
    for name, x in (("gt", gt), ("pred", pred)):
        x = np.asarray(x)
        if x.size == 0:
            x = x.reshape(0).astype(np.int64)
        if x.ndim != 1 or not np.issubdtype(x.dtype, np.integer):
            raise DataError(f"{where}: {name}", f"shape {x.shape}, dtype {x.dtype}", "a 1-D integer array of class ids")
        out.append(x.astype(np.int64, copy=False))
    if len(out[0]) != len(out[1]):
        raise DataError(where, f"gt has {len(out[0])} entries but pred has {len(out[1])}", "one prediction per example")
    return out[0], out[1]
