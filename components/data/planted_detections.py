"""`sgg-planted-det`: sgg-planted's images (identical GT) plus the output of a simulated object detector, for SGDet.

Per GT object, with its own RNG stream (seeded by (seed, split, index), apart from the GT's, so the GT
columns equal sgg-planted's byte for byte):
- with probability `recall` a *hit*: the box with each edge shifted by N(0, `box_jitter` x its side),
  redrawn until its IoU with the GT box is >= 0.5;
- otherwise, with probability `mislocalised`, a box shifted by 0.6-1.2 of its side along x or y (IoU < 0.5:
  a detection of the object that cannot match it), else no detection at all.
- A detection's feature is its object's feature plus `object_noise` x (1 - IoU) x N(0, 1): the RoI feature
  of a box degrades as the box leaves the object.
- Poisson(`false_positives` x objects) boxes of background clutter: a size drawn from the image's own
  boxes, placed uniformly, with the feature of an unrelated object of a VG-frequent class (its prototype
  plus the benchmark's object noise, no relation signal).
Detections are shuffled (the simulator has no scores, so no order means anything).

Calibration (fixed before any SGDet model ran; not to be retuned): `recall` was set so that the share of
training triplets whose subject and object both have a detection at IoU >= 0.5 (SGDet's recall ceiling, as
evaluation matches boxes; `prepare_data` prints it as `triplets_detectable`) is 0.83 = 30.3 / 36.5, MOTIFS'
SGDet R@100 over its SGCls R@100 on VG-150 (Zellers et al. 2018): the share of SGCls' recall that detection
leaves. Measured on the train split at scale 0.3: recall 0.80 -> 0.785, 0.82 -> 0.807, 0.85 -> 0.842,
0.91 -> 0.902; 0.84 fixed (full size: see the README). `mislocalised` 0.5, `false_positives` 0.5 per GT
object and `box_jitter` 0.1 are a priori (no VG statistic at hand pins them).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from components.data.planted_sgg import SPLIT_CODES, World
from components.evaluation.sgg import box_iou

HIT_IOU = 0.5
DETECTION_STREAM = 4_400_417  # keeps the detector's draws apart from the GT generator's


@dataclass
class PlantedDetectionConfig:
    """The simulated detector of sgg-planted-det (defaults = the fixed benchmark)."""

    recall: float = field(default=0.84, metadata={"range": (0.0, 1.0)})
    mislocalised: float = field(default=0.5, metadata={"range": (0.0, 1.0)})
    false_positives: float = field(default=0.5, metadata={"range": (0.0, 20.0)})
    box_jitter: float = field(default=0.1, metadata={"range": (0.0, 1.0)})


def _clip(box: np.ndarray, width: int, height: int) -> np.ndarray:
    """`box` clipped to the image (at least one pixel wide and high)."""
    x0, y0 = np.clip(box[:2], 0.0, [width - 1.0, height - 1.0])
    x1, y1 = np.clip(box[2:], [x0 + 1.0, y0 + 1.0], [max(width, x0 + 1.0), max(height, y0 + 1.0)])
    return np.array([x0, y0, x1, y1])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(box_iou(a[None], b[None])[0, 0])


def _hit(box: np.ndarray, rng: np.random.Generator, jitter: float, width: int, height: int) -> np.ndarray:
    """A jittered copy of `box` with IoU >= HIT_IOU (the box itself if 50 draws miss)."""
    side = np.array([box[2] - box[0], box[3] - box[1]] * 2)
    for _ in range(50):
        cand = _clip(box + jitter * side * rng.normal(size=4), width, height)
        if _iou(cand, box) >= HIT_IOU:
            return cand
    return box.astype(np.float64)


def _miss(box: np.ndarray, rng: np.random.Generator, width: int, height: int) -> np.ndarray | None:
    """`box` moved by 0.6-1.2 of its side along x or y; None if clipping leaves it matching the object."""
    axis = int(rng.integers(2))
    shift = np.zeros(2)
    shift[axis] = rng.uniform(0.6, 1.2) * (box[2 + axis] - box[axis]) * rng.choice([-1.0, 1.0])
    cand = _clip(box + np.concatenate([shift, shift]), width, height)
    return cand if _iou(cand, box) < HIT_IOU else None


def simulate_detections(img: dict, world: World, cfg: PlantedDetectionConfig, object_noise: float, seed: int,
                        index: int) -> dict:
    """`img` (a sgg-planted image) with `det_boxes` and `det_features` added, deterministic in (seed, split, index)."""
    rng = np.random.default_rng([seed, SPLIT_CODES[img["split"]], index, DETECTION_STREAM])
    w, h = int(img["width"]), int(img["height"])
    gt = np.asarray(img["boxes"], np.float64)
    feats = np.asarray(img["obj_features"], np.float64)
    boxes, out = [], []
    for k in range(len(gt)):
        if rng.random() < cfg.recall:
            box = _hit(gt[k], rng, cfg.box_jitter, w, h)
        elif rng.random() < cfg.mislocalised:
            box = _miss(gt[k], rng, w, h)
            if box is None:
                continue
        else:
            continue
        boxes.append(box)
        out.append(feats[k] + object_noise * (1.0 - _iou(box, gt[k])) * rng.normal(size=feats.shape[1]))
    for _ in range(rng.poisson(cfg.false_positives * len(gt))):
        j = int(rng.integers(len(gt)))
        bw, bh = gt[j, 2:] - gt[j, :2]
        x0, y0 = rng.uniform(0, max(w - bw, 1.0)), rng.uniform(0, max(h - bh, 1.0))
        boxes.append(_clip(np.array([x0, y0, x0 + bw, y0 + bh]), w, h))
        label = int(rng.choice(len(world.objects), p=world.obj_freq))
        out.append(world.prototypes[label] + object_noise * rng.normal(size=feats.shape[1]))
    order = rng.permutation(len(boxes))
    dim = feats.shape[1]
    return {**img,
            "det_boxes": np.asarray(boxes, np.float32).reshape(-1, 4)[order],
            "det_features": np.asarray(out, np.float32).reshape(-1, dim)[order]}
