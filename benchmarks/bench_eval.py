"""SGG evaluation benchmark: our vectorised streaming evaluator vs a plain per-image Python-loop reference
of the same protocol (community style: loop over images, per GT triplet, union of matches), side by side
on the same synthetic data, chunk by chunk (throughput in process CPU time, so other jobs on the machine
matter less); numbers must agree. Also the evaluator's peak memory at 1x, 4x, 16x images
streamed from a generator: Python allocations (tracemalloc, in this process: `eval_memory_growth`) and, as
tracemalloc does not see native (numpy, torch) allocations, the process's peak RSS minus its RSS after imports
with 1x and 16x images, each in a fresh interpreter (`eval_rss_growth`; Linux: /proc/self/status).

  python -m benchmarks.bench_eval [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import reduce
from pathlib import Path

import numpy as np
from tqdm import tqdm

from components.evaluation.sgg import SGGEvaluator, evaluate_sgg

NUM_PREDICATES = 50
NUM_OBJECTS = 150
ROOT = Path(__file__).resolve().parents[1]


def synthetic_image(seed: int, num_predicates: int = NUM_PREDICATES, boxes: int = 25) -> dict:
    """One synthetic test image: ~`boxes` GT boxes, jittered/mislabelled detections, all ordered pairs
    (~600 for 25 boxes), GT pairs' predicates favoured, scores quantised to 1/64 so ties occur."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(boxes - 3, boxes + 4))
    xy = rng.uniform(0, 500, (n, 2))
    wh = rng.uniform(10, 200, (n, 2))
    gt_boxes = np.round(np.concatenate([xy, xy + wh], 1))
    gt_labels = rng.integers(1, NUM_OBJECTS + 1, n)
    m = int(rng.integers(0, 2 * n // 3))
    subj = rng.integers(0, n, m)
    obj = (subj + rng.integers(1, n, m)) % n
    gt_rels = np.stack([subj, obj, rng.integers(1, num_predicates + 1, m)], 1)
    if m > 1 and rng.random() < 0.3:  # duplicate GT triplets
        gt_rels = np.concatenate([gt_rels, gt_rels[:2]])
    pred_boxes = gt_boxes + rng.normal(0, 0.1, (n, 4)) * np.concatenate([wh, wh], 1)
    pred_boxes = np.concatenate([np.minimum(pred_boxes[:, :2], pred_boxes[:, 2:]),
                                 np.maximum(pred_boxes[:, :2], pred_boxes[:, 2:])], 1).round()
    pred_labels = np.where(rng.random(n) < 0.8, gt_labels, rng.integers(1, NUM_OBJECTS + 1, n))
    pred_scores = np.ceil(rng.uniform(0.2, 1.0, n) * 64) / 64
    s, o = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    keep = s != o
    rel_pairs = np.stack([s[keep], o[keep]], 1)
    logits = rng.normal(0, 1, (len(rel_pairs), num_predicates + 1))
    pair_row = {(a, b): i for i, (a, b) in enumerate(rel_pairs.tolist())}
    for a, b, p in gt_rels.tolist():
        logits[pair_row[(a, b)], p] += rng.uniform(0, 7)
    e = np.exp(logits - logits.max(1, keepdims=True))
    rel_scores = (np.round(e / e.sum(1, keepdims=True) * 64) / 64).astype(np.float32)
    return {"gt_boxes": gt_boxes, "gt_labels": gt_labels, "gt_rels": gt_rels, "pred_boxes": pred_boxes,
            "pred_labels": pred_labels, "pred_scores": pred_scores.astype(np.float32), "rel_pairs": rel_pairs,
            "rel_scores": rel_scores}


def synthetic_images(n: int, start: int = 0) -> Iterator[dict]:
    """`n` synthetic images generated lazily (seeds start..start+n-1)."""
    return (synthetic_image(i) for i in range(start, start + n))


# ---- reference: the same protocol written as a plain per-image Python loop -------------------------

def _ref_iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    lt = np.maximum(boxes[:, :2], box[:2])
    rb = np.minimum(boxes[:, 2:], box[2:])
    wh = np.clip(rb - lt + 1.0, 0.0, None)
    inter = wh[:, 0] * wh[:, 1]
    area = (boxes[:, 2] - boxes[:, 0] + 1.0) * (boxes[:, 3] - boxes[:, 1] + 1.0)
    area1 = (box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
    return inter / (area + area1 - inter)


def _ref_pred_to_gt(gt_trip, gt_sbox, gt_obox, pr_trip, pr_sbox, pr_obox, thr, parent=None):
    """For each ranked prediction, the GT triplets it matches (labels + both IoUs), looping over GT."""
    pred_to_gt = [[] for _ in range(len(pr_trip))]
    for g in range(len(gt_trip)):
        pred_ok = pr_trip[:, 1] == gt_trip[g, 1]
        if parent is not None:
            pred_ok = pred_ok | (parent[pr_trip[:, 1]] == gt_trip[g, 1])
        keep = (pr_trip[:, 0] == gt_trip[g, 0]) & (pr_trip[:, 2] == gt_trip[g, 2]) & pred_ok
        for i in np.flatnonzero(keep):
            if (_ref_iou(pr_sbox[i:i + 1], gt_sbox[g])[0] >= thr) and (_ref_iou(pr_obox[i:i + 1], gt_obox[g])[0] >= thr):
                pred_to_gt[i].append(g)
    return pred_to_gt


def reference_evaluate(images: Iterable[Mapping], num_predicates: int, ks: Sequence[int] = (20, 50, 100),
                       iou_threshold: float = 0.5, tree: Mapping | None = None) -> dict:
    """Plain-loop reference of components.evaluation.sgg's protocol (percent), for cross-checking and speed."""
    c = num_predicates
    parent = None
    if tree is not None:
        parent = np.arange(c + 1)
        for f, p in tree.items():
            parent[int(f)] = int(p)
    modes = ["R", "ngR"] + (["hR"] if parent is not None else [])
    recalls = {m: {k: [] for k in ks} for m in modes}
    per_pred = {m: {k: [[] for _ in range(c + 1)] for k in ks} for m in modes}
    for img in images:
        gt_rels = np.asarray(img["gt_rels"], dtype=np.int64).reshape(-1, 3)
        pairs = np.asarray(img["rel_pairs"], dtype=np.int64).reshape(-1, 2)
        if len(gt_rels) == 0:
            continue  # an image without predicted pairs still counts: its recall is 0
        gt_boxes = np.asarray(img["gt_boxes"], dtype=np.float64)
        gt_labels = np.asarray(img["gt_labels"])
        boxes = np.asarray(img["pred_boxes"], dtype=np.float64)
        labels = np.asarray(img["pred_labels"])
        sc = np.asarray(img["pred_scores"], dtype=np.float64)
        rel_scores = np.asarray(img["rel_scores"], dtype=np.float64)
        gt_trip = np.stack([gt_labels[gt_rels[:, 0]], gt_rels[:, 2], gt_labels[gt_rels[:, 1]]], 1)
        gt_sbox, gt_obox = gt_boxes[gt_rels[:, 0]], gt_boxes[gt_rels[:, 1]]

        pred = 1 + rel_scores[:, 1:].argmax(1)
        score = rel_scores[:, 1:].max(1) * sc[pairs[:, 0]] * sc[pairs[:, 1]]
        order = np.argsort(-score, kind="stable")[:max(ks)]
        ranked = {"R": (pairs[order], pred[order])}
        objp = sc[pairs[:, 0]] * sc[pairs[:, 1]]
        cells = objp[:, None] * rel_scores[:, 1:]
        flat = np.argsort(-cells.ravel(), kind="stable")[:max(ks)]
        rows, cols = np.unravel_index(flat, cells.shape)
        ranked["ngR"] = (pairs[rows], cols + 1)
        ranked["hR"] = ranked["R"]
        for mode in modes:
            rp, rpred = ranked[mode]
            pr_trip = np.stack([labels[rp[:, 0]], rpred, labels[rp[:, 1]]], 1)
            p2g = _ref_pred_to_gt(gt_trip, gt_sbox, gt_obox, pr_trip, boxes[rp[:, 0]], boxes[rp[:, 1]],
                                  iou_threshold, parent if mode == "hR" else None)
            for k in ks:
                match = reduce(np.union1d, p2g[:k], np.zeros(0, dtype=np.int64)).astype(np.int64)
                recalls[mode][k].append(len(match) / len(gt_rels))
                hit = [0] * (c + 1)
                count = [0] * (c + 1)
                for g in range(len(gt_rels)):
                    count[gt_rels[g, 2]] += 1
                for g in match:
                    hit[gt_rels[g, 2]] += 1
                for p in range(1, c + 1):
                    if count[p] > 0:
                        per_pred[mode][k][p].append(hit[p] / count[p])
    out: dict = {}
    for mode in modes:
        mean_name = {"R": "mR", "ngR": "ngmR", "hR": "hmR"}[mode]
        for k in ks:
            per = [100.0 * float(np.mean(v)) if v else 0.0 for v in per_pred[mode][k][1:]]
            out[f"{mode}@{k}"] = 100.0 * float(np.mean(recalls[mode][k]))
            out[f"{mean_name}@{k}"] = float(np.mean(per))
            out[f"per_predicate_{mode}@{k}"] = per
    for k in ks:
        out[f"Mean@{k}"] = (out[f"R@{k}"] + out[f"mR@{k}"]) / 2.0
    return out


def max_abs_diff(a: Mapping, b: Mapping) -> float:
    """Largest absolute difference over the metric keys both results share (lists compared elementwise)."""
    diffs = [0.0]
    for key in a.keys() & b.keys():
        x, y = np.asarray(a[key], dtype=float), np.asarray(b[key], dtype=float)
        diffs.append(float(np.max(np.abs(x - y))) if x.size else 0.0)
    return max(diffs)


def _peak_bytes(n: int) -> int:
    """tracemalloc peak while our evaluator consumes `n` lazily generated images."""
    tracemalloc.start()
    evaluate_sgg(synthetic_images(n), NUM_PREDICATES)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status in MB: VmRSS (now) or VmHWM (peak of this program; unlike
    ru_maxrss, not raised by the RSS of the parent this process was forked from)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 2**10  # kB
    raise KeyError(field)


def rss_growth_child(n: int) -> None:
    """Subprocess entry: prints (JSON) peak RSS minus RSS after imports, MB, while our evaluator consumes `n`
    lazily generated images."""
    base = _status_mb("VmRSS")
    evaluate_sgg(synthetic_images(n), NUM_PREDICATES)
    print(json.dumps(_status_mb("VmHWM") - base))


def _rss_growth_mb(n: int) -> float:
    """`rss_growth_child(n)` run in a fresh interpreter (nothing allocated earlier in this process counts)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    code = f"from benchmarks.bench_eval import rss_growth_child; rss_growth_child({n})"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": path}, cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


class _SideBySide:
    """Feeds the reference lazily, chunk by chunk; each chunk is generated, then evaluated by ours, then by
    the reference, so both see the same data under the same machine load. Times are process CPU seconds
    (robust to other jobs on the cores), image generation excluded."""

    def __init__(self, n: int, chunk: int, tree: Mapping) -> None:
        self.n, self.chunk = n, chunk
        self.ours = SGGEvaluator(NUM_PREDICATES, tree=tree)
        self.ours_seconds = self.excluded_seconds = 0.0

    def __iter__(self) -> Iterator[dict]:
        for start in tqdm(range(0, self.n, self.chunk), desc="bench_eval", unit="chunk", mininterval=5.0):
            t0 = time.process_time()
            images = list(synthetic_images(min(self.chunk, self.n - start), start))
            t1 = time.process_time()
            for im in images:
                self.ours.process(im)
            t2 = time.process_time()
            self.ours_seconds += t2 - t1
            self.excluded_seconds += t2 - t0
            yield from images


def run(quick: bool = False) -> dict:
    """Throughput of ours vs the reference on the same streamed images, their agreement, and our peak
    memory growth over 1x/4x/16x streamed images (tracemalloc) and 1x/16x (process RSS)."""
    n = 500 if quick else 5000
    tree = {p: (p - 1) // 10 * 10 + 1 for p in range(1, NUM_PREDICATES + 1)}
    stream = _SideBySide(n, 50, tree)
    t0 = time.process_time()
    ref = reference_evaluate(stream, NUM_PREDICATES, tree=tree)
    ref_t = time.process_time() - t0 - stream.excluded_seconds
    ours, ours_t = stream.ours.evaluate(), stream.ours_seconds
    diff = max_abs_diff(ours, ref)
    assert diff < 1e-9, f"evaluator and reference disagree by {diff}"
    mem_n = 100 if quick else 250
    peaks = {f: _peak_bytes(mem_n * f) for f in (1, 4, 16)}
    rss = {f: _rss_growth_mb(mem_n * f) for f in (1, 16)}
    return {
        "eval_images": n,
        "eval_images_per_s": n / ours_t,
        "eval_reference_images_per_s": n / ref_t,
        "eval_speed_ratio": ref_t / ours_t,
        "eval_max_abs_diff": diff,
        "eval_R@100": ours["R@100"],
        "eval_mR@100": ours["mR@100"],
        "eval_peak_mb_1x": peaks[1] / 2**20,
        "eval_peak_mb_16x": peaks[16] / 2**20,
        "eval_memory_growth": peaks[16] / peaks[1],
        "eval_memory_growth_4x": peaks[4] / peaks[1],
        "eval_rss_peak_mb_1x": rss[1],
        "eval_rss_peak_mb_16x": rss[16],
        "eval_rss_growth": rss[16] / rss[1],
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="500 images instead of 5,000")
    res = run(quick=ap.parse_args(argv).quick)
    print("| key | value |\n|---|---|")
    for k, v in res.items():
        print(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |")


if __name__ == "__main__":
    main()
