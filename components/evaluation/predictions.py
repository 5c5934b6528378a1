"""Saved predictions on disk, so evaluation is re-runnable without the model.

SGG: a directory holding `manifest.json` (format, version, num_images, num_predicates, shard list) and
`shard-00000.npz`, ... Each shard stores, for every one of the eight per-image keys, the images' arrays
concatenated along axis 0 plus `<key>__len` (rows per image); arrays keep the dtypes they were given.
The whole directory appears atomically on `close()` (replacing an older one at that path); an unclosed or
failed writer leaves nothing behind at `path`.
LTVRR: one `.npz` file with gt_/pred_ arrays for sbj/obj/rel, training counts as (class, count) arrays
and optional synonym maps as (class, synset key) arrays; written atomically.
"""
from __future__ import annotations

import json
import zipfile
from collections.abc import Hashable, Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from components.atomic import atomic_dir, atomic_path, write_json
from components.errors import DataError
from components.evaluation.validate import SGG_KEYS, check_labels, check_sgg_image

SGG_FORMAT = "hmldiff-sgg-predictions"
LTVRR_FORMAT = "hmldiff-ltvrr-predictions"
VERSION = 1
_WIDTH = {"gt_boxes": 4, "gt_rels": 3, "pred_boxes": 4, "rel_pairs": 2}


class SGGPredictionWriter:
    """Streams per-image SGG predictions into npz shards (`images_per_shard` images each); use as a context
    manager or call close()."""

    def __init__(self, path: str | Path, num_predicates: int | None = None, images_per_shard: int = 256,
                 compress: bool = False) -> None:
        self.path = Path(path)
        self.num_predicates = num_predicates
        self.images_per_shard = max(1, int(images_per_shard))
        self._save = np.savez_compressed if compress else np.savez
        self._stack = ExitStack()
        self._tmp = self._stack.enter_context(atomic_dir(self.path))
        self._buf: list[dict] = []
        self._shards: list[dict] = []
        self.num_images = 0

    def add(self, image: Mapping) -> None:
        """Validate one image (DataError naming it) and buffer it; full buffers are written as a shard."""
        a = check_sgg_image(image, f"{self.path}: image {self.num_images}", self.num_predicates)
        if self.num_predicates is None and a["rel_scores"].shape[1]:
            self.num_predicates = a["rel_scores"].shape[1] - 1
        self._buf.append({k: np.asarray(image[k]) if a[k].size else a[k] for k in SGG_KEYS})
        self.num_images += 1
        if len(self._buf) >= self.images_per_shard:
            self._flush()

    def _flush(self) -> None:
        if not self._buf:
            return
        arrays = {}
        for k in SGG_KEYS:
            parts = [im[k] for im in self._buf]
            if k == "rel_scores":
                width = (self.num_predicates or 0) + 1
                parts = [p if len(p) else np.zeros((0, width), np.float32) for p in parts]
            arrays[k] = np.concatenate(parts)
            arrays[f"{k}__len"] = np.array([len(p) for p in parts], dtype=np.int64)
        name = f"shard-{len(self._shards):05d}.npz"
        with open(self._tmp / name, "wb") as fh:
            self._save(fh, **arrays)
        self._shards.append({"file": name, "images": len(self._buf)})
        self._buf = []

    def close(self) -> Path:
        """Write the last shard and the manifest, then move the directory into place."""
        self._flush()
        write_json(self._tmp / "manifest.json", {
            "format": SGG_FORMAT, "version": VERSION, "num_images": self.num_images,
            "num_predicates": self.num_predicates, "shards": self._shards})
        self._stack.close()
        return self.path

    def abort(self) -> None:
        """Discard everything written so far."""
        self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> SGGPredictionWriter:  # noqa: PYI034 (typing.Self needs Python 3.11)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def read_sgg_manifest(path: str | Path) -> dict:
    """The manifest of a saved SGG prediction directory (DataError if absent or of another format)."""
    f = Path(path) / "manifest.json"
    if not f.is_file():
        raise DataError(str(path), "has no manifest.json", "a directory written by SGGPredictionWriter (and closed)")
    try:
        m = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise DataError(str(f), f"unreadable: {e}", "a JSON manifest") from e
    if not isinstance(m, dict) or m.get("format") != SGG_FORMAT or m.get("version") != VERSION:
        raise DataError(str(f), "is not an SGG prediction manifest of this version",
                        f"format {SGG_FORMAT!r}, version {VERSION}")
    return m


def _load_npz(f: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(f, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(str(f), f"unreadable: {e}", "an .npz file written by this module") from e


def iter_sgg_predictions(path: str | Path) -> Iterator[dict]:
    """Yield the saved per-image dicts one at a time (one shard in memory)."""
    m = read_sgg_manifest(path)
    width = (m["num_predicates"] or 0) + 1
    for shard in m["shards"]:
        f = Path(path) / shard["file"]
        z = _load_npz(f)
        missing = [k for k in SGG_KEYS for s in ("", "__len") if k + s not in z]
        if missing:
            raise DataError(str(f), f"missing arrays {missing}", f"all of {list(SGG_KEYS)} and their __len")
        ends = {k: np.cumsum(z[f"{k}__len"]) for k in SGG_KEYS}
        for k in SGG_KEYS:
            if len(ends[k]) != shard["images"] or (ends[k][-1] if len(ends[k]) else 0) != len(z[k]):
                raise DataError(f"{f}: {k}", "row counts do not add up", f"{shard['images']} images as in the manifest")
        for i in range(shard["images"]):
            image = {k: z[k][(ends[k][i - 1] if i else 0):ends[k][i]] for k in SGG_KEYS}
            if not len(image["rel_scores"]):
                image["rel_scores"] = np.zeros((0, width), np.float32)
            yield image


def _counts_arrays(counts: Mapping[int, int], where: str) -> np.ndarray:
    try:
        arr = np.array([[int(k), int(v)] for k, v in counts.items()], dtype=np.int64).reshape(-1, 2)
    except (TypeError, ValueError, AttributeError) as e:
        raise DataError(where, "is not a mapping of class id -> integer count", "{class id: training count}") from e
    if (arr[:, 1] < 0).any():
        raise DataError(where, "has negative counts", "training counts >= 0")
    return arr


def save_ltvrr_predictions(path: str | Path, gt_sbj, pred_sbj, gt_obj, pred_obj, gt_rel, pred_rel,
                           obj_train_counts: Mapping[int, int], rel_train_counts: Mapping[int, int],
                           synonyms: Mapping[int, Hashable] | None = None,
                           rel_synonyms: Mapping[int, Hashable] | None = None) -> Path:
    """Validate and atomically write LTVRR test labels, top-1 predictions and training counts to one .npz."""
    arrays: dict[str, np.ndarray] = {"format": np.array(LTVRR_FORMAT), "version": np.array(VERSION)}
    lengths = set()
    for name, gt, pred in (("sbj", gt_sbj, pred_sbj), ("obj", gt_obj, pred_obj), ("rel", gt_rel, pred_rel)):
        arrays[f"gt_{name}"], arrays[f"pred_{name}"] = check_labels(gt, pred, f"{path}: {name}")
        lengths.add(len(arrays[f"gt_{name}"]))
    if len(lengths) != 1:
        raise DataError(str(path), f"sbj/obj/rel arrays have lengths {sorted(lengths)}", "one per test triplet")
    arrays["obj_train_counts"] = _counts_arrays(obj_train_counts, "obj_train_counts")
    arrays["rel_train_counts"] = _counts_arrays(rel_train_counts, "rel_train_counts")
    for name, syn in (("synonyms", synonyms), ("rel_synonyms", rel_synonyms)):
        if syn is not None:
            arrays[f"{name}_classes"] = np.array([int(k) for k in syn], dtype=np.int64)
            arrays[f"{name}_keys"] = np.array([str(v) for v in syn.values()], dtype=str)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return Path(path)


def load_ltvrr_predictions(path: str | Path) -> dict:
    """Keyword arguments for `ltvrr_report` read back from `save_ltvrr_predictions`' file."""
    f = Path(path)
    if not f.is_file():
        raise DataError(str(f), "does not exist", "an .npz written by save_ltvrr_predictions")
    z = _load_npz(f)
    if "format" not in z or str(z["format"]) != LTVRR_FORMAT or int(z.get("version", -1)) != VERSION:
        raise DataError(str(f), "is not an LTVRR prediction file of this version", f"format {LTVRR_FORMAT!r}")
    out: dict = {}
    for name in ("sbj", "obj", "rel"):
        out[f"gt_{name}"], out[f"pred_{name}"] = check_labels(z[f"gt_{name}"], z[f"pred_{name}"], f"{f}: {name}")
    for name in ("obj_train_counts", "rel_train_counts"):
        out[name] = {int(k): int(v) for k, v in z[name]}
    for name in ("synonyms", "rel_synonyms"):
        if f"{name}_classes" in z:
            out[name] = {int(k): str(v) for k, v in zip(z[f"{name}_classes"], z[f"{name}_keys"])}
    return out
