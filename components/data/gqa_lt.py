"""GQA-LT reader (the LTVRR release): relation annotations, vocabularies and training counts.

Files: `rel_annotations_{split}.json` = {image file: [{"subject": {"category": int, "bbox": [y1, y2,
x1, x2]}, "object": {...}, "predicate": int}]} with 0-based categories; `objects.json` and
`predicates.json` name lists; `*_freqs.json` name -> training count (a file whose name mentions
"obj" holds object counts, "pred"/"rel" predicate counts). Boxes become xyxy; labels stay 0-based,
as the feature store's relation samples expect. Without freqs files, counts come from the train split.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.data.vg150 import load_json
from components.errors import DataError

SPLITS: tuple[str, ...] = ("train", "val", "test")


def annotation_path(root: str | Path, split: str) -> Path:
    """Path of a split's relation annotations."""
    return Path(root) / f"rel_annotations_{split}.json"


def is_gqa_lt_dir(root: str | Path) -> bool:
    """True when `root` looks like a GQA-LT directory (objects.json plus a rel_annotations file)."""
    root = Path(root)
    return (root / "objects.json").is_file() and any(root.glob("rel_annotations_*.json"))


@dataclass
class GQALTVocab:
    """Names (index = 0-based label) and training counts per object and predicate class."""

    objects: list[str]
    predicates: list[str]
    object_counts: np.ndarray
    predicate_counts: np.ndarray
    counts_source: str


def _names(path: Path) -> list[str]:
    """A JSON list of unique class names."""
    names = load_json(path)
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise DataError(str(path), "not a non-empty list of names", "a JSON list of strings")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(str(path), f"name {dup!r} appears twice", "unique class names")
    return names


def _counts_from_file(path: Path, names: list[str]) -> np.ndarray:
    """Counts aligned with `names` from a name -> count JSON (absent names count 0)."""
    d = load_json(path)
    if not isinstance(d, dict):
        raise DataError(str(path), "not a mapping", "{name: training count}")
    index = {n: i for i, n in enumerate(names)}
    counts = np.zeros(len(names), dtype=np.int64)
    for name, c in d.items():
        if name not in index:
            raise DataError(str(path), f"name {name!r} is not in the vocabulary", "names from objects/predicates.json")
        if not isinstance(c, (int, float)) or c < 0 or int(c) != c:
            raise DataError(str(path), f"count of {name!r} is {c!r}", "a non-negative integer")
        counts[index[name]] = int(c)
    return counts


def load_vocab(root: str | Path) -> GQALTVocab:
    """Vocabularies and training counts (from `*_freqs.json`, else counted on the train split)."""
    root = Path(root)
    objects, predicates = _names(root / "objects.json"), _names(root / "predicates.json")
    obj_f = [p for p in sorted(root.glob("*_freqs.json")) if "obj" in p.name.lower()]
    pred_f = [p for p in sorted(root.glob("*_freqs.json")) if "pred" in p.name.lower() or "rel" in p.name.lower()]
    if obj_f and pred_f:
        return GQALTVocab(objects, predicates, _counts_from_file(obj_f[0], objects),
                          _counts_from_file(pred_f[0], predicates), f"{obj_f[0].name}, {pred_f[0].name}")
    samples = read_split(root, "train", objects, predicates)
    oc = np.bincount(np.concatenate([[s["subject"] for s in samples], [s["object"] for s in samples]]).astype(int),
                     minlength=len(objects))
    pc = np.bincount(np.array([s["predicate"] for s in samples], dtype=int), minlength=len(predicates))
    return GQALTVocab(objects, predicates, oc.astype(np.int64), pc.astype(np.int64), "counted on rel_annotations_train")


def _box(where: str, b: Any) -> list[float]:
    """[y1, y2, x1, x2] -> [x1, y1, x2, y2], checking four ordered numbers."""
    if not isinstance(b, list) or len(b) != 4 or not all(isinstance(v, (int, float)) for v in b):
        raise DataError(where, f"bbox {b!r}", "[y1, y2, x1, x2] numbers")
    y1, y2, x1, x2 = (float(v) for v in b)
    if x2 < x1 or y2 < y1:
        raise DataError(where, f"bbox {b!r} has y2 < y1 or x2 < x1", "[y1, y2, x1, x2] with y1 <= y2, x1 <= x2")
    return [x1, y1, x2, y2]


def _label(where: str, v: Any, n: int) -> int:
    """A 0-based class index in [0, n)."""
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < n:
        raise DataError(where, f"label {v!r} out of range", f"an integer in [0, {n - 1}]")
    return v


def read_split(root: str | Path, split: str, objects: list[str], predicates: list[str],
               first_sample_id: int = 0) -> list[dict]:
    """Relation samples of one split in file order: 0-based labels, xyxy boxes, consecutive sample ids."""
    path = annotation_path(root, split)
    if not path.is_file():
        raise DataError(str(path), "file missing", f"rel_annotations_{{split}}.json for split {split!r}")
    ann = load_json(path)
    if not isinstance(ann, dict):
        raise DataError(str(path), "top level is not a mapping", "{image file: [relations]}")
    out: list[dict] = []
    for image, rels in ann.items():
        if not isinstance(rels, list):
            raise DataError(f"{path}[{image!r}]", "not a list", "a list of relations")
        for k, r in enumerate(rels):
            where = f"{path}[{image!r}][{k}]"
            if not isinstance(r, dict):
                raise DataError(where, f"is {type(r).__name__} {r!r}", "a relation {subject, object, predicate}")
            try:
                sub, obj, pred = r["subject"], r["object"], r["predicate"]
                row = {"sample_id": first_sample_id + len(out), "image_id": str(image), "split": split,
                       "subject": _label(where + ".subject.category", sub["category"], len(objects)),
                       "object": _label(where + ".object.category", obj["category"], len(objects)),
                       "predicate": _label(where + ".predicate", pred, len(predicates)),
                       "subject_box": _box(where + ".subject", sub["bbox"]),
                       "object_box": _box(where + ".object", obj["bbox"])}
            except (KeyError, TypeError) as e:
                raise DataError(where, f"missing field {e}", "subject/object {category, bbox} and predicate") from e
            out.append(row)
    return out


def read_gqa_lt(root: str | Path, split: str) -> tuple[list[dict], GQALTVocab]:
    """Relation samples of `split` plus the vocabularies and training counts."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(str(root), "GQA-LT directory not found", "a directory with objects.json, predicates.json")
    if split not in SPLITS:
        raise DataError("split", f"unknown split {split!r}", f"one of {SPLITS}")
    vocab = load_vocab(root)
    return read_split(root, split, vocab.objects, vocab.predicates), vocab
