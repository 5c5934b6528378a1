"""SGDet: an image's detections as the objects a relation model sees, with targets assigned from the GT.

A detector's boxes replace the GT boxes. For training, each detection takes the label of the GT object it
overlaps most when that IoU >= `iou_threshold` (0 = background otherwise), and a detection pair inherits a
GT relation when its subject and object detections are assigned to that relation's GT subject and object
(Scene-Graph-Benchmark's proposal-to-GT assignment; the same IoU, +1-pixel convention, as its evaluation).
Duplicate detections of one GT object all inherit its relations. Evaluation does not use this assignment:
it matches predicted triplets to the GT by IoU (components/evaluation/sgg.py).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from components.errors import InputError
from components.evaluation.sgg import box_iou


def assign_detections(det_boxes: np.ndarray, gt_boxes: np.ndarray, iou_threshold: float = 0.5) -> np.ndarray:
    """(K,) index of the GT box each detection overlaps most, if that IoU >= `iou_threshold`, else -1."""
    if not 0.0 < iou_threshold <= 1.0:
        raise InputError("iou_threshold", f"{iou_threshold}", "a number in (0, 1]")
    det = np.asarray(det_boxes, np.float64).reshape(-1, 4)
    gt = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    if len(det) == 0 or len(gt) == 0:
        return np.full(len(det), -1, np.int64)
    iou = box_iou(det, gt)
    best = iou.argmax(1)
    return np.where(iou[np.arange(len(det)), best] >= iou_threshold, best, -1).astype(np.int64)


def detection_graph(img: dict[str, Any], iou_threshold: float = 0.5) -> dict[str, Any]:
    """The scene graph over `img`'s detections: boxes and features of the detections, labels of their assigned
    GT objects (0 = background), and every GT relation carried to each detection pair assigned to its
    subject and object (with its fine label)."""
    if "det_boxes" not in img or "det_features" not in img:
        raise InputError(f"image {img.get('image_id', '?')}", "no detections (det_boxes, det_features)",
                         "a feature store written with detections (SGDet)")
    det_boxes = np.asarray(img["det_boxes"], np.float32).reshape(-1, 4)
    match = assign_detections(det_boxes, img["boxes"], iou_threshold)
    labels = np.where(match >= 0, np.asarray(img["labels"], np.int64)[np.maximum(match, 0)], 0)
    rels = np.asarray(img["rels"], np.int64).reshape(-1, 3)
    fine = np.asarray(img["rel_fine"], np.int64)
    out_rels, out_fine = [], []
    for (s, o, p), f in zip(rels, fine):
        subj, obj = np.flatnonzero(match == s), np.flatnonzero(match == o)
        ii, jj = np.meshgrid(subj, obj, indexing="ij")
        keep = ii != jj
        out_rels.append(np.stack([ii[keep], jj[keep], np.full(int(keep.sum()), p)], 1))
        out_fine.append(np.full(int(keep.sum()), f))
    return {"image_id": img["image_id"], "split": img.get("split", ""), "width": img["width"],
            "height": img["height"], "boxes": det_boxes, "labels": labels,
            "obj_features": np.asarray(img["det_features"], np.float32).reshape(len(det_boxes), -1),
            "rels": np.concatenate(out_rels).astype(np.int64) if out_rels else np.zeros((0, 3), np.int64),
            "rel_fine": np.concatenate(out_fine).astype(np.int64) if out_fine else np.zeros(0, np.int64)}
