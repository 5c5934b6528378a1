"""Scene-graph recall (R@K, mR@K, no-graph-constraint ngR@K/ngmR@K, Mean@K, hierarchy-aware hR@K/hmR@K)
with the protocol of Scene-Graph-Benchmark.pytorch, streamed image by image in bounded memory.

Protocol (every choice stated; all values are returned in PERCENT, like the papers):
- Input per image (numpy): gt_boxes (N,4 xyxy), gt_labels (N,), gt_rels (M,3: subject index, object index,
  predicate 1..C), pred_boxes (P,4), pred_labels (P,), pred_scores (P,), rel_pairs (R,2 indices into the
  predicted boxes), rel_scores (R, C+1; column 0 = background; probabilities, >= 0).
- Graph constraint: per pair, predicate = argmax over columns 1..C (ties: lowest id); triplet score =
  predicate score * subject score * object score (multiplied in that order); pairs are ranked by
  descending score, ties by input order (stable sort); the top K are kept.
- No graph constraint: every (pair, predicate) cell, predicate in 1..C, scored (subject score * object
  score) * predicate score; ranked descending, ties by row-major cell order; the top K cells are kept.
- Match: a predicted triplet matches a GT triplet when subject, predicate and object labels are equal AND
  the subject boxes' IoU >= thr AND the object boxes' IoU >= thr, IoU with the +1-pixel convention
  (area = (x2-x1+1)*(y2-y1+1)). Boxes are matched by overlap, not by index, so another box can match.
- Recall of one image = GT triplets matched by any of the top K / number of GT triplets; duplicate GT
  triplets count separately (one prediction can match several). R@K = mean over evaluated images.
  Images without GT relations are skipped (counted in `skipped_no_gt`); an image with GT relations but
  no predicted pair is evaluated with recall 0 for every K and predicate, as the benchmark scores an empty
  prediction (counted in `no_pred`, included in `num_images`).
- mR@K: per image and per predicate present in its GT, that predicate's recall in the image; per predicate
  the mean over the images where it appears (`per_predicate_R@K`, 0 for a predicate absent from the test
  GT); mR@K = mean over ALL C predicates (absent ones count 0). Mean@K = (R@K + mR@K) / 2.
- Hierarchy-aware recall (given `tree`: fine predicate id -> coarse parent id, 1-based, a coarse predicate
  being its own parent; ids not listed are their own parent): same graph-constrained ranking, but a
  predicted predicate p also hits a GT predicate g when parent(p) == g, i.e. predicting a fine child
  ("parked on") of a GT coarse predicate ("on") counts; predicting the coarse "on" for a GT "parked on"
  does not. Gives hR@K, hmR@K and per_predicate_hR@K (same averaging as R/mR).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from components.errors import DataError, InputError
from components.evaluation.validate import check_sgg_image

_NEVER = np.iinfo(np.int64).max


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of xyxy boxes with the +1-pixel convention of the SGG benchmark."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt + 1.0, 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0] + 1.0) * (a[:, 3] - a[:, 1] + 1.0)
    area_b = (b[:, 2] - b[:, 0] + 1.0) * (b[:, 3] - b[:, 1] + 1.0)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def parent_array(tree: Mapping | None, num_predicates: int) -> np.ndarray | None:
    """(C+1,) parent id per 1-based predicate id from a {fine id: coarse id} mapping (unlisted = itself)."""
    if tree is None:
        return None
    parent = np.arange(num_predicates + 1)
    for fine, coarse in tree.items():
        try:
            f, c = int(fine), int(coarse)
        except (TypeError, ValueError) as e:
            raise InputError("tree", f"entry {fine!r}: {coarse!r} is not an integer pair", "predicate id -> parent id") from e
        if not (1 <= f <= num_predicates and 1 <= c <= num_predicates):
            raise InputError("tree", f"entry {f}: {c} out of range", f"1-based predicate ids in 1..{num_predicates}")
        parent[f] = c
    bad = np.flatnonzero(parent[parent] != parent)
    if bad.size:
        raise InputError("tree", f"parent {parent[bad[0]]} of predicate {bad[0]} has its own parent "
                         f"{parent[parent[bad[0]]]}", "a two-level tree (a coarse predicate is its own parent)")
    return parent


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, descending, ties by index (= a stable sort's first k, cheaper)."""
    n = scores.size
    cand = np.arange(n)
    if n > k:
        kth = np.partition(scores, n - k)[n - k]
        cand = np.flatnonzero(scores >= kth)
    return cand[np.argsort(-scores[cand], kind="stable")[:k]]


def _top_cells(objp: np.ndarray, rs: np.ndarray, pmax: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and 0-based columns of the k best cells of objp[:, None] * rs (ties by row-major order).

    Only rows whose best cell reaches the k-th best row maximum can hold a top-k cell (the k row maxima
    above are k cells at least that good), and objp * max(row) == max(objp * row) exactly for objp >= 0
    (rounding is monotone), so only those rows are multiplied out.
    """
    if len(rs) <= k:
        sel = _top((objp[:, None] * rs).ravel(), k)
        return sel // rs.shape[1], sel % rs.shape[1]
    rowmax = objp * pmax
    t0 = np.partition(rowmax, len(rs) - k)[len(rs) - k]
    rows = np.flatnonzero(rowmax >= t0)
    flat = (objp[rows, None] * rs[rows]).ravel()
    keep = np.flatnonzero(flat >= t0)  # the k-th best cell is >= t0 as well
    sel = keep[_top(flat[keep], k)]
    return rows[sel // rs.shape[1]], sel % rs.shape[1]


def _first_hits(ok: np.ndarray, sub: np.ndarray, obj: np.ndarray, pred_ok: np.ndarray, starts: np.ndarray,
                rank: np.ndarray, gs: np.ndarray, go: np.ndarray) -> np.ndarray:
    """(modes, M) rank of the first prediction of each ranked list (rows starts[i]..) matching each GT triplet."""
    m = ok[sub[:, None], gs[None, :]] & ok[obj[:, None], go[None, :]] & pred_ok
    return np.minimum.reduceat(np.where(m, rank[:, None], _NEVER), starts, axis=0)


class SGGEvaluator:
    """Streaming SGG recall evaluator (detectron2 protocol: reset / process(image) / evaluate)."""

    def __init__(self, num_predicates: int, ks: Sequence[int] = (20, 50, 100), iou_threshold: float = 0.5,
                 tree: Mapping | None = None) -> None:
        if not isinstance(num_predicates, (int, np.integer)) or num_predicates < 1:
            raise InputError("num_predicates", f"{num_predicates!r}", "a positive integer")
        ks = tuple(int(k) for k in ks)
        if not ks or min(ks) < 1 or len(set(ks)) != len(ks):
            raise InputError("ks", f"{ks}", "distinct positive integers")
        if not 0.0 < float(iou_threshold) <= 1.0:
            raise InputError("iou_threshold", f"{iou_threshold}", "a number in (0, 1]")
        self.num_predicates = int(num_predicates)
        self.ks = ks
        self.iou_threshold = float(iou_threshold)
        self.parent = parent_array(tree, self.num_predicates)
        self.modes = ("R", "ngR") + (("hR",) if self.parent is not None else ())
        self._kvec = np.asarray(ks)[None, :, None]
        self._arange = np.arange(max(ks))
        self.reset()

    def reset(self) -> None:
        """Forget every processed image."""
        shape = (len(self.modes), len(self.ks))
        self.seen = self.evaluated = self.skipped_no_gt = self.no_pred = 0
        self._recall_sum = np.zeros(shape)
        self._pred_recall_sum = np.zeros(shape + (self.num_predicates + 1,))
        self._pred_images = np.zeros(self.num_predicates + 1, dtype=np.int64)

    def process(self, image: Mapping) -> None:
        """Add one image's per-K, per-predicate recalls to running sums (its arrays are not kept)."""
        a = check_sgg_image(image, f"image {self.seen}", self.num_predicates)
        self.seen += 1
        gt_rels, pairs = a["gt_rels"], a["rel_pairs"]
        if len(gt_rels) == 0:
            self.skipped_no_gt += 1
            return
        self.evaluated += 1
        gs, go, gp = gt_rels[:, 0], gt_rels[:, 1], gt_rels[:, 2]
        counts = np.bincount(gp, minlength=self.num_predicates + 1)
        self._pred_images += counts > 0
        if len(pairs) == 0:  # nothing predicted: every GT triplet missed, recall 0 (sums unchanged)
            self.no_pred += 1
            return
        kmax = max(self.ks)
        sc, rs = a["pred_scores"], a["rel_scores"][:, 1:]
        ok = (a["pred_labels"][:, None] == a["gt_labels"][None, :]) & (
            box_iou(a["pred_boxes"], a["gt_boxes"]) >= self.iou_threshold)

        objp = sc[pairs[:, 0]] * sc[pairs[:, 1]]
        pmax = rs.max(1).astype(np.float64)
        order = _top(pmax * sc[pairs[:, 0]] * sc[pairs[:, 1]], kmax)  # graph constraint
        pp = rs[order].argmax(1)  # argmax of the kept rows only (numpy's row-wise argmax is slow)
        rows, cols = _top_cells(objp, rs, pmax, kmax)  # no graph constraint
        pair_idx = np.concatenate([order, rows] + ([order] if self.parent is not None else []))
        pred = np.concatenate([pp, cols] + ([pp] if self.parent is not None else [])) + 1
        pred_ok = pred[:, None] == gp[None, :]
        if self.parent is not None:
            h = slice(len(order) + len(rows), None)
            pred_ok[h] |= self.parent[pred[h]][:, None] == gp[None, :]
        lengths = [len(order), len(rows)] + ([len(order)] if self.parent is not None else [])
        starts = [0, lengths[0], lengths[0] + lengths[1]][:len(lengths)]
        rank = np.concatenate([self._arange[:n] for n in lengths])
        first = _first_hits(ok, pairs[pair_idx, 0], pairs[pair_idx, 1], pred_ok, starts, rank, gs, go)

        hits = first[:, None, :] < self._kvec  # (modes, len(ks), M)
        self._recall_sum += hits.sum(2) / len(gp)
        c1, nmk = self.num_predicates + 1, hits.shape[0] * hits.shape[1]
        idx = (gp[None, :] + c1 * np.arange(nmk)[:, None]).ravel()
        per = np.bincount(idx, weights=hits.ravel(), minlength=c1 * nmk).reshape(hits.shape[:2] + (c1,))
        present = counts > 0
        self._pred_recall_sum[:, :, present] += per[:, :, present] / counts[present]

    def evaluate(self) -> dict:
        """Metrics in percent (see the module docstring), per-predicate lists and image counts."""
        if self.evaluated == 0:
            raise DataError("SGG predictions", f"none of {self.seen} images has GT relations",
                            "at least one image with GT relations")
        n_img = np.maximum(self._pred_images[1:], 1)
        out: dict = {}
        for j, mode in enumerate(self.modes):
            mean_name = {"R": "mR", "ngR": "ngmR", "hR": "hmR"}[mode]
            for i, k in enumerate(self.ks):
                per = 100.0 * self._pred_recall_sum[j, i, 1:] / n_img
                out[f"{mode}@{k}"] = 100.0 * float(self._recall_sum[j, i]) / self.evaluated
                out[f"{mean_name}@{k}"] = float(per.mean())
                out[f"per_predicate_{mode}@{k}"] = per.tolist()
        for k in self.ks:
            out[f"Mean@{k}"] = (out[f"R@{k}"] + out[f"mR@{k}"]) / 2.0
        out.update(num_images=self.evaluated, skipped_no_gt=self.skipped_no_gt, no_pred=self.no_pred,
                   predicate_image_counts=self._pred_images[1:].tolist())
        return out


def evaluate_sgg(images: Iterable[Mapping], num_predicates: int, ks: Sequence[int] = (20, 50, 100),
                 iou_threshold: float = 0.5, tree: Mapping | None = None) -> dict:
    """R@K, mR@K, ngR@K, ngmR@K, Mean@K (+ hR@K, hmR@K with `tree`) in PERCENT over a stream of images."""
    ev = SGGEvaluator(num_predicates, ks, iou_threshold, tree)
    for image in images:
        ev.process(image)
    return ev.evaluate()
