"""VG-150 reader: the community's `VG-SGG-with-attri.h5` + dicts json + `image_data.json` -> per-image scene graphs.

Follows the split conventions of Scene-Graph-Benchmark.pytorch: h5 `split == 0` is train, `== 2` is
test; images without boxes are dropped; images without relations are dropped when
`filter_empty_rels` (the benchmark's default, applied to every split); val = the first `num_val`
remaining train images, train = the rest. Boxes (cx, cy, w, h at long side `box_scale`) become xyxy
in image pixels as the benchmark's `load_graphs` converts them: x1 = cx - w/2 and x2 = x1 + w, with x1
truncated toward zero when the h5 stores integers (the released file's int32, converted in place there),
then times max(width, height) / box_scale. Relation
indices, global in the h5, become indices into the image's own boxes. Duplicate relations are kept
(de-duplicating is a training-time choice, not a property of the data). Relations of an object to
itself (subject == object) are dropped: PredCls and SGDet score only pairs i != j, so they can never be
predicted; each graph's `self_rels_dropped` says how many of its relations were dropped. An image
whose relations were all such stays in its split with no relation (split membership follows the h5).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np

from components.errors import DataError

H5_NAME = "VG-SGG-with-attri.h5"
DICT_NAMES = ("VG-SGG-dicts-with-attri.json", "VG-SGG-dicts.json")
IMAGE_DATA_NAME = "image_data.json"
H5_KEYS = ("split", "labels", "img_to_first_box", "img_to_last_box", "relationships", "predicates",
           "img_to_first_rel", "img_to_last_rel")
DICT_KEYS = ("label_to_idx", "idx_to_label", "predicate_to_idx", "idx_to_predicate")
# image_data.json lists 108,077 images, the h5 108,073: these four ids are absent from the h5.
CORRUPT_IMAGE_IDS = frozenset({1592, 1722, 4616, 4617})
Split = Literal["train", "val", "test"]
SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class VG150Files:
    """Paths of the three files of a VG-150 directory."""

    h5: Path
    dicts: Path
    image_data: Path


def find_files(root: str | Path) -> VG150Files:
    """Locate the h5, dicts json and image_data.json in `root`; DataError naming what is missing."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(str(root), "VG-150 directory not found", f"a directory holding {H5_NAME}")
    h5 = root / H5_NAME
    if not h5.is_file():
        raise DataError(str(h5), "file missing", "the VG-150 h5 of Scene-Graph-Benchmark")
    dicts = next((root / n for n in DICT_NAMES if (root / n).is_file()), None)
    if dicts is None:
        raise DataError(str(root / DICT_NAMES[0]), "file missing", f"one of {list(DICT_NAMES)}")
    image_data = root / IMAGE_DATA_NAME
    if not image_data.is_file():
        raise DataError(str(image_data), "file missing", "Visual Genome image metadata (width, height per image)")
    return VG150Files(h5=h5, dicts=dicts, image_data=image_data)


def is_vg150_dir(root: str | Path) -> bool:
    """True when `root` holds the VG-150 h5 (used to tell dataset kinds apart)."""
    return (Path(root) / H5_NAME).is_file()


def load_json(path: Path) -> Any:
    """Parse a JSON file; DataError naming it when unreadable or corrupt."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise DataError(str(path), "file missing") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(str(path), f"corrupt JSON: {e}", "a valid JSON file") from e


def _index_list(where: str, mapping: Any, key: str) -> list[str]:
    """Names ordered by their 1-based string index ("1".."N"), checking the keys are exactly 1..N."""
    if not isinstance(mapping, dict) or not mapping:
        raise DataError(where, f"{key!r} is not a non-empty mapping", "{'1': name, ...}")
    try:
        idx = sorted(int(k) for k in mapping)
    except ValueError as e:
        raise DataError(where, f"{key!r} has a non-integer key", "1-based string indices") from e
    if idx != list(range(1, len(idx) + 1)):
        raise DataError(where, f"{key!r} indices are not 1..{len(idx)}", "contiguous 1-based indices")
    return [str(mapping[str(i)]) for i in idx]


def load_vocab(path: str | Path) -> tuple[list[str], list[str]]:
    """Object and predicate names from the dicts json; names[i] is label i + 1."""
    d = load_json(Path(path))
    if not isinstance(d, dict):
        raise DataError(str(path), "top level is not an object", f"keys {list(DICT_KEYS)}")
    missing = [k for k in DICT_KEYS if k not in d]
    if missing:
        raise DataError(str(path), f"missing keys {missing}", f"keys {list(DICT_KEYS)}")
    return _index_list(str(path), d["idx_to_label"], "idx_to_label"), \
        _index_list(str(path), d["idx_to_predicate"], "idx_to_predicate")


def _read_h5(path: Path, box_scale: int) -> dict[str, np.ndarray]:
    """All arrays the reader needs, with shape checks; DataError on unreadable files or missing keys."""
    box_key = f"boxes_{box_scale}"
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in (*H5_KEYS, box_key) if k not in f]
            if missing:
                raise DataError(str(path), f"missing keys {missing}", f"keys {[*H5_KEYS, box_key]}")
            a = {k: np.asarray(f[k][()]) for k in H5_KEYS}
            raw = np.asarray(f[box_key][()])
            a["boxes"] = np.asarray(raw, dtype=np.float64)
            a["boxes_integer"] = np.asarray(np.issubdtype(raw.dtype, np.integer))
    except OSError as e:
        raise DataError(str(path), f"unreadable HDF5 (truncated or not HDF5): {e}", "a complete h5 file") from e
    for k in (*H5_KEYS, "boxes"):
        if not np.issubdtype(a[k].dtype, np.number):
            raise DataError(str(path), f"{k!r} has dtype {a[k].dtype}", "numeric arrays")
    if a["split"].ndim != 1:
        raise DataError(str(path), f"'split' has shape {a['split'].shape}", "(N_images,)")
    n_img = a["split"].shape[0]
    checks = {"labels": (None, 1), "boxes": (None, 4), "relationships": (None, 2), "predicates": (None, 1)}
    for k, (_, cols) in checks.items():
        if a[k].ndim != 2 or a[k].shape[1] != cols:
            raise DataError(str(path), f"{k!r} has shape {a[k].shape}", f"(N, {cols})")
    if a["labels"].shape[0] != a["boxes"].shape[0]:
        raise DataError(str(path), f"{a['labels'].shape[0]} labels but {a['boxes'].shape[0]} boxes",
                        "one label per box")
    if a["relationships"].shape[0] != a["predicates"].shape[0]:
        raise DataError(str(path), "'relationships' and 'predicates' differ in length", "one predicate per relation")
    for k in ("img_to_first_box", "img_to_last_box", "img_to_first_rel", "img_to_last_rel"):
        if a[k].shape != (n_img,):
            raise DataError(str(path), f"{k!r} has shape {a[k].shape}", f"({n_img},) like 'split'")
    return a


def _check_ranges(path: Path, a: dict[str, np.ndarray], n_obj: int, n_pred: int) -> None:
    """Labels, predicates and first/last index pairs inside their valid ranges."""
    labels, preds = a["labels"][:, 0], a["predicates"][:, 0]
    for name, vals, hi in (("labels", labels, n_obj), ("predicates", preds, n_pred)):
        bad = np.flatnonzero((vals < 1) | (vals > hi))
        if bad.size:
            raise DataError(str(path), f"{name!r}[{bad[0]}] = {vals[bad[0]]} out of range", f"values in [1, {hi}]")
    for what, n in (("box", labels.shape[0]), ("rel", preds.shape[0])):
        first, last = a[f"img_to_first_{what}"], a[f"img_to_last_{what}"]
        none = (first < 0) | (last < 0)
        bad = np.flatnonzero(none != ((first < 0) & (last < 0)) | (~none & ((first > last) | (last >= n))))
        if bad.size:
            i = bad[0]
            raise DataError(str(path), f"image {i}: img_to_first_{what}={first[i]}, img_to_last_{what}={last[i]}",
                            f"both -1 or 0 <= first <= last < {n}")
    w_h = a["boxes"][:, 2:]
    bad = np.flatnonzero((w_h <= 0).any(axis=1))
    if bad.size:
        raise DataError(str(path), f"box {bad[0]} has width/height {w_h[bad[0]].tolist()}", "positive sizes")


def _align_image_data(path: Path, entries: Any, n_img: int) -> list[dict]:
    """image_data entries aligned with the h5 rows (dropping the known absent ids when that aligns them)."""
    if not isinstance(entries, list):
        raise DataError(str(path), "top level is not a list", "a list of {width, height, image_id, url}")
    if len(entries) != n_img:
        entries = [e for e in entries if not (isinstance(e, dict) and e.get("image_id") in CORRUPT_IMAGE_IDS)]
    if len(entries) != n_img:
        raise DataError(str(path), f"{len(entries)} images listed", f"{n_img} images, one per h5 row")
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or any(k not in e for k in ("width", "height", "image_id")):
            raise DataError(str(path), f"entry {i} lacks width/height/image_id", "{width, height, image_id, url}")
        if not all(isinstance(e[k], (int, float)) and not isinstance(e[k], bool) and e[k] > 0
                   for k in ("width", "height")):
            raise DataError(str(path), f"entry {i} has width {e['width']!r}, height {e['height']!r}",
                            "positive numbers")
    return entries


def split_indices(split_col: np.ndarray, has_boxes: np.ndarray, has_rels: np.ndarray, split: Split,
                  num_val: int, filter_empty_rels: bool) -> np.ndarray:
    """h5 row indices of `split` in file order, following the benchmark's filtering and val carving."""
    if split not in SPLITS:
        raise DataError("split", f"unknown split {split!r}", f"one of {SPLITS}")
    if num_val < 0:
        raise DataError("num_val", f"{num_val} is negative", "a number of validation images >= 0")
    mask = (split_col == (2 if split == "test" else 0)) & has_boxes
    if filter_empty_rels:
        mask &= has_rels
    idx = np.flatnonzero(mask)
    if split == "val":
        return idx[:num_val]
    if split == "train":
        return idx[num_val:]
    return idx


def read_vg150(root: str | Path, split: Split, num_val: int = 5000, filter_empty_rels: bool = True,
               box_scale: int = 1024) -> tuple[list[dict], list[str], list[str]]:
    """Scene graphs of one split plus (object names, predicate names); rows follow store.scene_graphs' layout
    plus reader facts (`h5_index`; `self_rels_dropped`, the image's self-relations the reader dropped)."""
    files = find_files(root)
    objects, predicates = load_vocab(files.dicts)
    a = _read_h5(files.h5, box_scale)
    _check_ranges(files.h5, a, len(objects), len(predicates))
    entries = _align_image_data(files.image_data, load_json(files.image_data), a["split"].shape[0])
    has_boxes, has_rels = a["img_to_first_box"] >= 0, a["img_to_first_rel"] >= 0
    idx = split_indices(a["split"], has_boxes, has_rels, split, num_val, filter_empty_rels)
    return [_image_graph(files.h5, a, i, entries[i], split, box_scale) for i in idx], objects, predicates


def _image_graph(path: Path, a: dict[str, np.ndarray], i: int, info: dict, split: str, box_scale: int) -> dict:
    """One image's scene graph: xyxy pixel boxes, 1-based labels, per-image relations (self-relations dropped)."""
    b0, b1 = int(a["img_to_first_box"][i]), int(a["img_to_last_box"][i]) + 1
    cxcywh = a["boxes"][b0:b1]
    scale = max(float(info["width"]), float(info["height"])) / box_scale
    x1y1 = cxcywh[:, :2] - cxcywh[:, 2:] / 2
    if a["boxes_integer"]:
        x1y1 = np.trunc(x1y1)  # the benchmark writes the corner back into the int32 array: truncation
    boxes = np.concatenate([x1y1, x1y1 + cxcywh[:, 2:]], axis=1) * scale
    rels, n_annotated = np.zeros((0, 3), dtype=np.int64), 0
    if a["img_to_first_rel"][i] >= 0:
        r0, r1 = int(a["img_to_first_rel"][i]), int(a["img_to_last_rel"][i]) + 1
        pairs, n_annotated = a["relationships"][r0:r1].astype(np.int64), r1 - r0
        if ((pairs < b0) | (pairs >= b1)).any():
            j = r0 + int(np.flatnonzero(((pairs < b0) | (pairs >= b1)).any(axis=1))[0])
            raise DataError(str(path), f"relationships[{j}] = {a['relationships'][j].tolist()} is outside image {i}'s "
                            f"boxes", f"global box indices in [{b0}, {b1 - 1}]")
        rels = np.concatenate([pairs - b0, a["predicates"][r0:r1].astype(np.int64)], axis=1)
        rels = rels[rels[:, 0] != rels[:, 1]]
    image_id = int(info["image_id"])
    url = str(info.get("url") or "")
    return {"image_id": str(image_id), "split": split, "width": int(info["width"]), "height": int(info["height"]),
            "boxes": boxes.astype(np.float32), "labels": a["labels"][b0:b1, 0].astype(np.int64),
            "rels": rels, "rel_fine": rels[:, 2].copy(), "file_name": f"{image_id}.jpg", "url": url,
            "h5_index": int(i), "self_rels_dropped": n_annotated - len(rels)}


def image_path(image_root: str | Path, row: dict) -> Path:
    """Where a VG image lives: `<root>/<id>.jpg`, else `<root>/<VG_100K or VG_100K_2>/<id>.jpg` as in its url."""
    root = Path(image_root)
    flat = root / row["file_name"]
    if flat.is_file():
        return flat
    sub = Path(row.get("url", "")).parent.name
    nested = root / sub / row["file_name"] if sub else flat
    return nested if nested.is_file() else flat
