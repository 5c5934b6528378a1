"""A detector's output in the COCO detection-results format, as SGDet's boxes per image.

The format every detection toolkit writes (detectron2's `coco_instances_results.json`, mmdetection's
`--format-only` json, pycocotools' `loadRes` input): one JSON list of
`{"image_id": int or str, "category_id": int, "bbox": [x, y, w, h], "score": float}`, boxes in the pixels of
the image as the annotations size it (VG-150: `image_data.json`'s width and height). Per image the
`max_per_image` highest-scoring boxes with score >= `min_score` are kept (Scene-Graph-Benchmark's SGDet keeps
80), as xyxy with x2 = x + w (the VG-150 reader's convention). Category and score are not kept: SGDet models
classify the boxes themselves.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from components.errors import DataError, InputError


def _entry_box(path: str, i: int, e: object) -> tuple[str, float, list[float]]:
    """(image id, score, xyxy box) of entry `i`; DataError naming the entry when it does not fit the format."""
    expected = '{"image_id", "category_id", "bbox": [x, y, w, h], "score"}'
    if not isinstance(e, dict) or any(k not in e for k in ("image_id", "bbox", "score")):
        raise DataError(path, f"entry {i} is not a detection: {str(e)[:80]}", expected)
    box, score = e["bbox"], e["score"]
    if (not isinstance(box, list) or len(box) != 4 or not all(isinstance(v, (int, float)) for v in box)
            or not all(math.isfinite(v) for v in box) or box[2] <= 0 or box[3] <= 0):
        raise DataError(path, f"entry {i} has bbox {box!r}", "4 finite numbers [x, y, w, h] with w, h > 0")
    if not isinstance(score, (int, float)) or isinstance(score, bool) or not math.isfinite(score):
        raise DataError(path, f"entry {i} has score {score!r}", "a finite number")
    x, y, w, h = (float(v) for v in box)
    return str(e["image_id"]), float(score), [x, y, x + w, y + h]


def read_coco_detections(path: str | Path, image_ids: set[str] | None = None, max_per_image: int = 80,
                         min_score: float = 0.0) -> dict[str, np.ndarray]:
    """{image id (as a string): (K, 4) float32 xyxy boxes, best score first} for the images of `image_ids`
    (all if None); an image with no kept detection is absent."""
    if max_per_image < 1:
        raise InputError("max_per_image", f"{max_per_image}", "at least 1")
    p = Path(path)
    if not p.is_file():
        raise DataError(str(p), "detections file not found", "a COCO detection-results JSON file")
    try:
        entries = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(str(p), f"corrupt JSON: {e}", "a COCO detection-results JSON list") from e
    if not isinstance(entries, list):
        raise DataError(str(p), f"top level is {type(entries).__name__}", "a JSON list of detections")
    per_image: dict[str, list[tuple[float, list[float]]]] = defaultdict(list)
    for i, e in enumerate(entries):
        image, score, box = _entry_box(str(p), i, e)
        if score >= min_score and (image_ids is None or image in image_ids):
            per_image[image].append((score, box))
    out = {}
    for image, dets in per_image.items():
        dets.sort(key=lambda d: -d[0])
        out[image] = np.asarray([b for _, b in dets[:max_per_image]], np.float32).reshape(-1, 4)
    return out
