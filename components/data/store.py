"""Feature store: parquet shards per split plus a manifest, written atomically, read with validation.

Layout: `<root>/manifest.json` and `<root>/<split>/part-NNNNN.parquet`. A shard is written to a
temp file and renamed; the manifest (row counts, dims, vocabularies, sha256 per shard) is written
last, so a store without a manifest is incomplete and is refused by readers.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from components.atomic import atomic_path, ensure_writable_dir, write_json
from components.data import schema as S
from components.errors import DataError

MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Manifest:
    """What a store holds: kind, schema version, dims, dtype, vocabularies and shards per split."""

    kind: str
    feature_dim: int
    dtype: str
    objects: list[str]
    predicates: list[str]
    splits: dict[str, list[dict]] = field(default_factory=dict)
    version: int = S.SCHEMA_VERSION
    meta: dict[str, Any] = field(default_factory=dict)
    detections: bool = False  # scene graphs with each image's detected boxes and features (SGDet)

    @property
    def schema(self) -> pa.Schema:
        """The declared schema of this store's shards."""
        return S.schema_for(self.kind, self.feature_dim, self.dtype, self.detections)  # type: ignore[arg-type]

    @property
    def feature_columns(self) -> tuple[str, ...]:
        """Columns holding features (checked for dims and finiteness)."""
        return S.FEATURE_COLUMNS[self.kind] + (("det_features",) if self.detections else ())

    def rows(self, split: str) -> int:
        return sum(int(f["rows"]) for f in self.splits.get(split, []))

    def to_json(self) -> dict:
        return {"kind": self.kind, "version": self.version, "feature_dim": self.feature_dim,
                "dtype": self.dtype, "objects": self.objects, "predicates": self.predicates,
                "splits": {k: {"rows": self.rows(k), "files": v} for k, v in self.splits.items()},
                "meta": self.meta, **({"detections": True} if self.detections else {})}

    @classmethod
    def from_json(cls, where: str, d: dict) -> Manifest:
        need = ("kind", "version", "feature_dim", "dtype", "objects", "predicates", "splits")
        missing = [k for k in need if k not in d]
        if missing:
            raise DataError(where, f"manifest misses keys {missing}", f"keys {list(need)}")
        if d["kind"] not in S.KINDS:
            raise DataError(where, f"unknown record kind {d['kind']!r}", f"one of {S.KINDS}")
        if d["version"] != S.SCHEMA_VERSION:
            raise DataError(where, f"schema version {d['version']!r}", f"version {S.SCHEMA_VERSION}")
        fdim = d["feature_dim"]
        if not isinstance(fdim, int) or isinstance(fdim, bool) or fdim < 1:
            raise DataError(where, f"feature_dim {fdim!r}", "a positive integer")
        if d["dtype"] not in ("float16", "float32"):
            raise DataError(where, f"dtype {d['dtype']!r}", "'float16' or 'float32'")
        detections = d.get("detections", False)
        if not isinstance(detections, bool) or (detections and d["kind"] != S.SCENE_GRAPH):
            raise DataError(where, f"detections {detections!r} in a {d['kind']!r} store",
                            f"true or false, true only in a {S.SCENE_GRAPH!r} store")
        return cls(kind=d["kind"], feature_dim=fdim, dtype=d["dtype"],
                   objects=list(d["objects"]), predicates=list(d["predicates"]),
                   splits=_split_files(where, d["splits"]), version=d["version"], meta=dict(d.get("meta", {})),
                   detections=detections)


def _split_files(where: str, splits: Any) -> dict[str, list[dict]]:
    """Shard entries per split from a manifest's "splits", each checked to hold path, rows and sha256."""
    if not isinstance(splits, dict):
        raise DataError(where, f"'splits' is {type(splits).__name__}", "{split: {rows, files: [...]}}")
    out: dict[str, list[dict]] = {}
    for split, v in splits.items():
        files = v.get("files") if isinstance(v, dict) else None
        if not isinstance(files, list):
            raise DataError(where, f"split {split!r} has no 'files' list", "{rows, files: [{path, rows, sha256}]}")
        for i, f in enumerate(files):
            if not isinstance(f, dict) or any(k not in f for k in ("path", "rows", "sha256")):
                raise DataError(where, f"split {split!r} file entry {i} is {f!r}", "{path, rows, sha256}")
        out[split] = list(files)
    return out


class StoreWriter:
    """Writes validated shards of one record kind; `close()` writes the manifest (the store's commit)."""

    def __init__(self, root: str | Path, kind: str, feature_dim: int, objects: list[str],
                 predicates: list[str], dtype: S.FeatureDType = "float32", meta: dict | None = None,
                 detections: bool = False) -> None:
        self.root = ensure_writable_dir(root)
        self.schema = S.schema_for(kind, feature_dim, dtype, detections)
        self.manifest = Manifest(kind=kind, feature_dim=feature_dim, dtype=dtype, objects=list(objects),
                                 predicates=list(predicates), meta=dict(meta or {}), detections=detections)
        (self.root / MANIFEST).unlink(missing_ok=True)  # the store is incomplete until close()

    def write(self, split: str, rows: Iterable[dict] | pa.Table) -> Path:
        """Write one shard of `split` from row dicts (numpy arrays allowed) or a table; returns its path."""
        table = rows if isinstance(rows, pa.Table) else rows_to_table(list(rows), self.schema)
        table = table.cast(self.schema)
        validate_table(table, self.manifest, where=f"shard of split {split!r}")
        files = self.manifest.splits.setdefault(split, [])
        rel = f"{split}/part-{len(files):05d}.parquet"
        path = self.root / rel
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        files.append({"path": rel, "rows": table.num_rows, "sha256": sha256_file(path)})
        return path

    def close(self) -> Path:
        """Write the manifest atomically; the store is complete from this moment."""
        return write_json(self.root / MANIFEST, self.manifest.to_json())


def rows_to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Build a table of `schema` from row dicts whose values may be numpy arrays."""
    cols = {}
    for f in schema:
        vals = []
        for r in rows:
            if f.name not in r:
                raise DataError(f"row {r.get('image_id', r.get('sample_id', '?'))}", f"missing field {f.name!r}",
                                f"fields {schema.names}")
            v = r[f.name]
            vals.append(v.tolist() if isinstance(v, np.ndarray) else v)
        cols[f.name] = pa.array(vals, type=f.type)
    return pa.Table.from_pydict(cols, schema=schema)


def _flat_values(col: pa.ChunkedArray) -> np.ndarray:
    arr = col.combine_chunks()
    while pa.types.is_list(arr.type) or pa.types.is_fixed_size_list(arr.type) or pa.types.is_large_list(arr.type):
        arr = arr.flatten()
    return arr.to_numpy(zero_copy_only=False)


def _has_nulls(col: pa.ChunkedArray) -> bool:
    """Whether a column holds a null at any nesting level (a null inside a list would read back as NaN)."""
    arr = col.combine_chunks()
    while True:
        if arr.null_count:
            return True
        if not (pa.types.is_list(arr.type) or pa.types.is_fixed_size_list(arr.type) or pa.types.is_large_list(arr.type)):
            return False
        arr = arr.flatten()


def validate_table(table: pa.Table, manifest: Manifest, where: str) -> None:
    """Check columns and their declared types, nulls, feature dims, finiteness and label ranges; raise
    DataError naming `where`."""
    expected = manifest.schema
    missing = [n for n in expected.names if n not in table.column_names]
    if missing:
        raise DataError(where, f"missing columns {missing}", f"columns {expected.names}")
    for name in manifest.feature_columns:
        t = table.schema.field(name).type
        inner = t.value_type if manifest.kind == S.SCENE_GRAPH and pa.types.is_list(t) else t
        if not pa.types.is_fixed_size_list(inner) or inner.list_size != manifest.feature_dim:
            got = inner.list_size if pa.types.is_fixed_size_list(inner) else str(inner)
            raise DataError(where, f"column {name!r} has feature dim {got}", f"dim {manifest.feature_dim}")
    wrong = [f"{f.name!r} is {table.schema.field(f.name).type}, expected {f.type}" for f in expected
             if not table.schema.field(f.name).type.equals(f.type)]
    if wrong:
        raise DataError(where, "columns of another type: " + "; ".join(wrong),
                        "the store's declared schema (components/data/schema.py)")
    nulls = [n for n in expected.names if _has_nulls(table.column(n))]
    if nulls:
        raise DataError(where, f"null values in columns {nulls}", "no nulls at any nesting level")
    for name in manifest.feature_columns:
        vals = _flat_values(table.column(name))
        if vals.size and not np.isfinite(vals.astype(np.float32)).all():
            raise DataError(where, f"column {name!r} holds NaN or inf", "finite features")
    base = S.LABEL_BASE[manifest.kind]
    for cols, n in ((S.OBJECT_LABEL_COLUMNS[manifest.kind], len(manifest.objects)),
                    (S.PREDICATE_LABEL_COLUMNS[manifest.kind], len(manifest.predicates))):
        for name in cols:
            _check_range(where, name, _flat_values(table.column(name)), base, base + n - 1)
    if manifest.kind == S.SCENE_GRAPH:
        _validate_scene_graph_rels(table, manifest, where)


def _check_range(where: str, name: str, vals: np.ndarray, lo: int, hi: int) -> None:
    if vals.size and (vals.min() < lo or vals.max() > hi):
        bad = vals[(vals < lo) | (vals > hi)][0]
        raise DataError(where, f"column {name!r} has label {bad} out of range", f"labels in [{lo}, {hi}]")


def _validate_scene_graph_rels(table: pa.Table, manifest: Manifest, where: str) -> None:
    """Relations index two distinct objects of their image with predicates in range; lengths agree per row."""
    n_obj = np.asarray(table.column("labels").combine_chunks().value_lengths())
    rels = table.column("rels").combine_chunks()
    n_rel = np.asarray(rels.value_lengths())
    flat = _flat_values(table.column("rels")).reshape(-1, 3)
    owner = np.repeat(np.arange(len(n_rel)), n_rel)
    if flat.size:
        if (flat[:, :2] < 0).any() or (flat[:, :2] >= n_obj[owner][:, None]).any():
            raise DataError(where, "column 'rels' indexes an object outside its image", "indices in [0, N_obj)")
        selfs = np.flatnonzero(flat[:, 0] == flat[:, 1])
        if selfs.size:
            image = table.column("image_id")[int(owner[selfs[0]])].as_py()
            raise DataError(where, f"column 'rels' of image {image!r} relates an object to itself ({selfs.size} "
                            "such relations in this shard; no model can predict them)", "subject != object")
        _check_range(where, "rels[:, 2]", flat[:, 2], 1, len(manifest.predicates))
        _check_range(where, "rel_fine", _flat_values(table.column("rel_fine")), 1, len(manifest.predicates))
    n_box = np.asarray(table.column("boxes").combine_chunks().value_lengths())
    n_feat = np.asarray(table.column("obj_features").combine_chunks().value_lengths())
    n_fine = np.asarray(table.column("rel_fine").combine_chunks().value_lengths())
    if not (np.array_equal(n_box, n_obj) and np.array_equal(n_feat, n_obj)):
        raise DataError(where, "boxes, labels and obj_features differ in length", "one of each per object")
    if not np.array_equal(n_fine, n_rel):
        raise DataError(where, "rel_fine and rels differ in length", "one fine label per relation")
    if manifest.detections:
        n_det = np.asarray(table.column("det_boxes").combine_chunks().value_lengths())
        if not np.array_equal(np.asarray(table.column("det_features").combine_chunks().value_lengths()), n_det):
            raise DataError(where, "det_boxes and det_features differ in length", "one feature per detected box")


class FeatureStore:
    """Read side of a store: manifest, shard paths (for Ray Data), validated tables."""

    def __init__(self, root: str | Path, kind: str | None = None) -> None:
        """Open the store at `root`; with `kind`, refuse a store of another kind (scene_graph/relation_sample)."""
        self.root = Path(root)
        mpath = self.root / MANIFEST
        if not self.root.is_dir():
            raise DataError(str(self.root), "feature store directory not found", "a directory with manifest.json")
        if not mpath.is_file():
            raise DataError(str(mpath), "manifest missing: the store is incomplete or not a feature store",
                            "manifest.json written by StoreWriter.close()")
        try:
            raw = json.loads(mpath.read_text())
        except json.JSONDecodeError as e:
            raise DataError(str(mpath), f"corrupt JSON: {e}") from e
        self.manifest = Manifest.from_json(str(mpath), raw)
        if kind is not None and self.manifest.kind != kind:
            raise DataError(str(self.root), f"store kind {self.manifest.kind!r}", f"a {kind!r} store")

    @property
    def splits(self) -> list[str]:
        return list(self.manifest.splits)

    def paths(self, split: str) -> list[str]:
        """Absolute shard paths of `split`."""
        if split not in self.manifest.splits:
            raise DataError(str(self.root), f"split {split!r} not in store", f"one of {self.splits}")
        files = self.manifest.splits[split]
        if not files:
            raise DataError(str(self.root), f"split {split!r} is empty", "at least one shard")
        return [str(self.root / f["path"]) for f in files]

    def _read_checked(self, entry: dict, check_sum: bool, columns: list[str] | None = None) -> tuple[Path, pa.Table]:
        """(path, table) of a manifest entry's shard (only `columns`, if given), checked to exist, (with
        `check_sum`) to be unmodified, to parse and to hold the manifest's row count; DataError otherwise."""
        path = self.root / entry["path"]
        if not path.is_file():
            raise DataError(str(path), "shard listed in manifest is missing")
        if check_sum and sha256_file(path) != entry["sha256"]:
            raise DataError(str(path), "checksum differs from manifest (truncated or modified file)")
        try:
            table = pq.read_table(path, columns=columns)
        except (pa.ArrowInvalid, OSError, KeyError) as e:
            what = "parquet" if columns is None else f"columns {columns}"
            raise DataError(str(path), f"unreadable {what}: {e}", "a complete parquet shard") from e
        if table.num_rows != int(entry["rows"]):
            raise DataError(str(path), f"{table.num_rows} rows", f"{entry['rows']} rows as the manifest says")
        return path, table

    def read_shard(self, entry: dict, check_sum: bool = True) -> pa.Table:
        """Read and validate one shard described by a manifest entry."""
        path, table = self._read_checked(entry, check_sum)
        validate_table(table, self.manifest, where=str(path))
        return table

    def read(self, split: str, check_sum: bool = True) -> pa.Table:
        """All shards of `split`, validated, as one table."""
        self.paths(split)
        return pa.concat_tables([self.read_shard(e, check_sum) for e in self.manifest.splits[split]])

    def iter_tables(self, split: str, check_sum: bool = True) -> Iterator[pa.Table]:
        """Validated shards of `split` one at a time (bounded memory)."""
        self.paths(split)
        for e in self.manifest.splits[split]:
            yield self.read_shard(e, check_sum)

    def iter_columns(self, split: str, columns: list[str], check_sum: bool = True) -> Iterator[tuple[Path, pa.Table]]:
        """(path, table) of each shard of `split` with only `columns`, one shard at a time: label scans decode no
        feature. Values are not range-checked here (`read_shard` does that for whole shards); callers check
        what they use."""
        self.paths(split)
        for entry in self.manifest.splits[split]:
            yield self._read_checked(entry, check_sum, columns)

    def predicate_counts(self, split: str, check_sum: bool = True) -> np.ndarray:
        """Annotated relations per predicate label of `split`, indexed by the store's label (scene graphs:
        1-based ids, index 0 unused; relation samples: 0-based). Reads the predicate column alone, so no
        feature is decoded: a count over a real VG-150 store costs a label scan, not a feature read."""
        kind, n = self.manifest.kind, len(self.manifest.predicates)
        base = S.LABEL_BASE[kind]
        column = "rels" if kind == S.SCENE_GRAPH else "predicate"
        counts = np.zeros(base + n, dtype=np.int64)
        for path, table in self.iter_columns(split, [column], check_sum):
            labels = _flat_values(table.column(column)).astype(np.int64)
            labels = labels.reshape(-1, 3)[:, 2] if kind == S.SCENE_GRAPH else labels
            _check_range(str(path), column, labels, base, base + n - 1)
            counts += np.bincount(labels, minlength=base + n)
        return counts

    def validate(self) -> dict[str, int]:
        """Deep check of every shard; returns rows per split."""
        return {s: sum(t.num_rows for t in self.iter_tables(s)) for s in self.splits}


def scene_graphs(table: pa.Table) -> Iterator[dict[str, Any]]:
    """Rows of a scene-graph table as dicts of numpy arrays (boxes (N,4), labels (N,), obj_features (N,D), rels (M,3),
    and in a store with detections det_boxes (K,4), det_features (K,D))."""
    d = table.to_pydict()
    det_dim = table.schema.field("det_features").type.value_type.list_size if "det_features" in d else 0
    for i in range(table.num_rows):
        n = len(d["labels"][i])
        feats = np.asarray(d["obj_features"][i], dtype=np.float32)
        yield {
            "image_id": d["image_id"][i], "split": d["split"][i],
            "width": d["width"][i], "height": d["height"][i],
            "boxes": np.asarray(d["boxes"][i], dtype=np.float32).reshape(n, 4),
            "labels": np.asarray(d["labels"][i], dtype=np.int64),
            "obj_features": feats.reshape(n, -1),
            "rels": np.asarray(d["rels"][i], dtype=np.int64).reshape(-1, 3),
            "rel_fine": np.asarray(d["rel_fine"][i], dtype=np.int64),
            **({"det_boxes": np.asarray(d["det_boxes"][i], dtype=np.float32).reshape(-1, 4),
                "det_features": np.asarray(d["det_features"][i], dtype=np.float32).reshape(-1, det_dim)}
               if "det_boxes" in d else {}),
        }


def relation_arrays(table: pa.Table) -> dict[str, np.ndarray]:
    """Columns of a relation-sample table as numpy arrays (features (N,D) float32)."""
    out: dict[str, np.ndarray] = {}
    for name in table.column_names:
        col = table.column(name)
        t = col.type
        if pa.types.is_fixed_size_list(t):
            out[name] = _flat_values(col).astype(np.float32).reshape(table.num_rows, t.list_size)
        else:
            out[name] = col.to_numpy()
    return out
