"""Batches of store rows (Ray Data numpy dicts or pyarrow tables) -> per-image dicts or torch tensors.

Ray Data's numpy format turns nested list columns into object arrays of arrays; these helpers give
back exactly the layout of `store.scene_graphs` (numpy per image) and, for relation samples, one
float32/int64 tensor per column, so training code never sees how the batch travelled.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from components.data.store import relation_arrays, scene_graphs
from components.errors import DataError

Batch = Mapping[str, np.ndarray] | pa.Table
SCENE_GRAPH_COLUMNS = ("image_id", "split", "width", "height", "boxes", "labels", "obj_features", "rels", "rel_fine")
RELATION_FLOAT_COLUMNS = ("subject_box", "object_box", "subject_feature", "object_feature", "union_feature")
RELATION_INT_COLUMNS = ("sample_id", "subject", "object", "predicate")


def _matrix(value: Any, width: int | None, dtype: type) -> np.ndarray:
    """A (rows, width) array from a 2-D array or a numpy object array of per-row arrays (possibly empty)."""
    arr = np.asarray(value)
    if arr.dtype == object:
        rows = [np.asarray(r, dtype=dtype).reshape(-1) for r in arr]
        arr = np.stack(rows) if rows else np.zeros((0, width or 0), dtype)
    arr = arr.astype(dtype, copy=False)
    return arr.reshape(len(arr), width or (arr.shape[1] if arr.ndim > 1 else -1))


def _check_columns(names: list[str], need: tuple[str, ...], kind: str) -> None:
    """DataError naming the columns a batch lacks."""
    missing = [c for c in need if c not in names]
    if missing:
        raise DataError(f"{kind} batch", f"missing columns {missing}", f"columns {list(need)}")


def scene_graph_rows(batch: Batch) -> list[dict[str, Any]]:
    """Per-image dicts (numpy) in the layout of `store.scene_graphs` from one batch of scene-graph rows."""
    if isinstance(batch, pa.Table):
        _check_columns(batch.column_names, SCENE_GRAPH_COLUMNS, "scene-graph")
        return list(scene_graphs(batch))
    _check_columns(list(batch), SCENE_GRAPH_COLUMNS, "scene-graph")
    out = []
    for i in range(len(batch["image_id"])):
        labels = np.asarray(batch["labels"][i], dtype=np.int64)
        out.append({"image_id": str(batch["image_id"][i]), "split": str(batch["split"][i]),
                    "width": int(batch["width"][i]), "height": int(batch["height"][i]),
                    "boxes": _matrix(batch["boxes"][i], 4, np.float32), "labels": labels,
                    "obj_features": _matrix(batch["obj_features"][i], None, np.float32),
                    "rels": _matrix(batch["rels"][i], 3, np.int64),
                    "rel_fine": np.asarray(batch["rel_fine"][i], dtype=np.int64)})
        if "det_boxes" in batch:  # a store with detections (SGDet)
            out[-1].update(det_boxes=_matrix(batch["det_boxes"][i], 4, np.float32),
                           det_features=_matrix(batch["det_features"][i], out[-1]["obj_features"].shape[1], np.float32))
    return out


def relation_tensors(batch: Batch) -> dict[str, torch.Tensor]:
    """Relation-sample batch -> float32 (N, D)/(N, 4) features and boxes, int64 (N,) ids and labels."""
    if isinstance(batch, pa.Table):
        _check_columns(batch.column_names, RELATION_FLOAT_COLUMNS + RELATION_INT_COLUMNS, "relation-sample")
        arrays = relation_arrays(batch.select(list(RELATION_FLOAT_COLUMNS + RELATION_INT_COLUMNS)))
    else:
        _check_columns(list(batch), RELATION_FLOAT_COLUMNS + RELATION_INT_COLUMNS, "relation-sample")
        arrays = {k: batch[k] for k in RELATION_FLOAT_COLUMNS + RELATION_INT_COLUMNS}
    out = {k: torch.from_numpy(_matrix(arrays[k], None, np.float32)) for k in RELATION_FLOAT_COLUMNS}
    out.update({k: torch.from_numpy(np.asarray(arrays[k]).astype(np.int64)) for k in RELATION_INT_COLUMNS})
    return out
