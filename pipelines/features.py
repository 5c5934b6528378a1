"""Detector features for real data: VG-150 or GQA-LT annotations + images -> a feature store, on Ray Data.

    python pipelines/features.py --dataset vg150 --data DIR --images DIR --out STORE \
        detector.checkpoint=fasterrcnn_resnet50_fpn.pth [actors=2 cpus_per_actor=0.5 limit=100 ...]

Per image, an actor pool (ActorPoolStrategy, fractional CPUs) loads the image with PIL and computes
RoI features of every box (VG-150: `scene_graph` rows, object features) or of every relation's
subject, object and union box (GQA-LT: `relation_sample` rows). The driver writes shards of
`shard_rows` rows per split into a temporary directory renamed onto `--out` when complete. The
manifest's meta records the detector config, which parts of it came from the checkpoint, and per split what
the reader dropped (`reader`: VG-150's relations of a box to itself).

For SGDet, `detections=FILE` names a detector's output on the same images in the COCO detection-results
format (components/data/coco_detections.py); the store then also holds each image's detected boxes (the
`max_detections` best with score >= `min_detection_score`) and their RoI features, computed in the same
backbone pass as the GT boxes' (VG-150 only).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from components.atomic import atomic_dir
from components.config import config_hash, from_dict, load_config, to_dict
from components.data import gqa_lt, vg150
from components.data.coco_detections import read_coco_detections
from components.data.detector import BoxFeatureExtractor, DetectorConfig
from components.data.schema import RELATION_SAMPLE, SCENE_GRAPH, schema_for
from components.data.store import StoreWriter, rows_to_table
from components.errors import ConfigError, DataError
from pipelines.actor_errors import carry_input_errors, input_errors_raised, wrapped_input_errors
from pipelines.cli import exit_code
from pipelines.ray_runtime import actor_device, actor_threads, init_ray

DATASETS = ("vg150", "gqa_lt")
BOX = pa.list_(pa.float32(), 4)
VG_INPUT = pa.schema([("image_id", pa.string()), ("split", pa.string()), ("path", pa.string()),
                      ("width", pa.int32()), ("height", pa.int32()), ("boxes", pa.list_(BOX)),
                      ("labels", pa.list_(pa.int32())), ("rels", pa.list_(pa.list_(pa.int32(), 3))),
                      ("rel_fine", pa.list_(pa.int32()))])
GQA_INPUT = pa.schema([("image_id", pa.string()), ("split", pa.string()), ("path", pa.string()),
                       ("sample_id", pa.list_(pa.int64())), ("subject", pa.list_(pa.int32())),
                       ("object", pa.list_(pa.int32())), ("predicate", pa.list_(pa.int32())),
                       ("subject_box", pa.list_(BOX)), ("object_box", pa.list_(BOX))])


@dataclass
class FeaturesConfig:
    """Inputs, output, detector and actor-pool settings of the feature stage."""

    dataset: str = field(default="vg150", metadata={"choices": DATASETS})
    data: str = ""
    images: str = ""
    out: str = ""
    splits: list[str] = field(default_factory=lambda: ["train", "val", "test"])
    num_val: int = field(default=5000, metadata={"range": (0, 10**7)})
    filter_empty_rels: bool = True
    limit: int = field(default=0, metadata={"range": (0, 10**9)})  # images per split; 0 = all
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    dtype: str = field(default="float16", metadata={"choices": ("float16", "float32")})
    actors: int = field(default=1, metadata={"range": (1, 1024)})
    cpus_per_actor: float = field(default=0.5, metadata={"range": (0.01, 64)})  # also its torch threads (>= 1)
    gpus_per_actor: float = field(default=0.0, metadata={"range": (0.0, 16)})  # > 0: the detector runs on a GPU
    images_per_call: int = field(default=4, metadata={"range": (1, 4096)})
    shard_rows: int = field(default=1000, metadata={"range": (1, 10**7)})
    detections: str = ""  # SGDet: a COCO detection-results JSON of the same images ("" = none)
    max_detections: int = field(default=80, metadata={"range": (1, 10**4)})
    min_detection_score: float = field(default=0.0, metadata={"range": (0.0, 1.0)})

    def validate(self) -> None:
        for name in ("data", "images", "out"):
            if not getattr(self, name):
                raise ConfigError(name, "not given", f"--{name} DIR")
        if self.detections and self.dataset != "vg150":
            raise ConfigError("detections", f"given for dataset {self.dataset!r}",
                              "detections only with --dataset vg150 (scene graphs, SGDet)")
        self.detector.validate()


def load_rgb(path: str) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB; DataError naming the file if missing or unreadable."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError as e:
        raise DataError(path, "image file missing", "the image named by the annotations") from e
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(path, f"unreadable image: {e}", "a complete JPEG/PNG file") from e


def vg_inputs(cfg: FeaturesConfig, split: str) -> tuple[pa.Table, list[str], list[str], dict]:
    """VG-150 scene graphs of `split` as an input table (one row per image), vocabularies and reader facts
    (relations of a box to itself, which the reader drops: they can never be predicted)."""
    graphs, objects, predicates = vg150.read_vg150(cfg.data, split, cfg.num_val, cfg.filter_empty_rels)  # type: ignore[arg-type]
    graphs = graphs[: cfg.limit or None]
    facts = {"self_relations_dropped": int(sum(g["self_rels_dropped"] for g in graphs))}
    rows = [{"image_id": g["image_id"], "split": split, "path": str(vg150.image_path(cfg.images, g)),
             "width": g["width"], "height": g["height"], "boxes": g["boxes"].tolist(), "labels": g["labels"].tolist(),
             "rels": g["rels"].tolist(), "rel_fine": g["rel_fine"].tolist()} for g in graphs]
    return pa.Table.from_pylist(rows, schema=VG_INPUT), objects, predicates, facts


def gqa_inputs(cfg: FeaturesConfig, split: str) -> tuple[pa.Table, list[str], list[str], dict]:
    """GQA-LT relation samples of `split` grouped per image as an input table, vocabularies and reader facts
    (none: the GQA-LT reader drops nothing)."""
    samples, vocab = gqa_lt.read_gqa_lt(cfg.data, split)
    per_image: dict[str, list[dict]] = defaultdict(list)
    for s in samples:
        per_image[s["image_id"]].append(s)
    images = list(per_image)[: cfg.limit or None]
    rows = [{"image_id": im, "split": split, "path": str(Path(cfg.images) / im),
             **{k: [s[k] for s in per_image[im]] for k in GQA_INPUT.names[3:]}} for im in images]
    return pa.Table.from_pylist(rows, schema=GQA_INPUT), vocab.objects, vocab.predicates, {}


class FeatureActor:
    """Ray Data actor: holds one extractor; turns a batch of input rows into store rows (Arrow)."""

    def __init__(self, detector: dict, kind: str, dtype: str, threads: int = 1, device: str = "cpu",
                 detections: bool = False) -> None:
        import torch
        torch.set_num_threads(threads)
        self.model = BoxFeatureExtractor(from_dict(DetectorConfig, detector)).to(device)
        self.kind = kind
        self.schema = schema_for(kind, self.model.cfg.feature_dim, dtype, detections)  # type: ignore[arg-type]

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows: list[dict] = []
        with wrapped_input_errors():  # a bad image reaches the driver as its own DataError
            for r in batch.to_pylist():
                image = load_rgb(r["path"])
                rows += self._scene_graph(r, image) if self.kind == SCENE_GRAPH else self._relations(r, image)
            return rows_to_table(rows, self.schema)

    def _scene_graph(self, r: dict, image: np.ndarray) -> list[dict]:
        """One scene-graph row: boxes (annotation pixels; GT, then any detections) rescaled to the real image
        size for pooling, in one pass."""
        boxes = np.asarray(r["boxes"], dtype=np.float32).reshape(-1, 4)
        dets = np.asarray(r.get("det_boxes") or [], dtype=np.float32).reshape(-1, 4)
        sx, sy = image.shape[1] / r["width"], image.shape[0] / r["height"]
        feats, _ = self.model.extract(image, np.concatenate([boxes, dets]) * np.array([sx, sy, sx, sy], dtype=np.float32))
        row = {**{k: r[k] for k in ("image_id", "split", "width", "height", "boxes", "labels", "rels", "rel_fine")},
               "obj_features": feats[:len(boxes)]}
        if "det_boxes" in r:
            row.update(det_boxes=dets, det_features=feats[len(boxes):])
        return [row]

    def _relations(self, r: dict, image: np.ndarray) -> list[dict]:
        """One relation-sample row per relation of the image: subject, object and union features."""
        sub, obj = np.asarray(r["subject_box"], np.float32), np.asarray(r["object_box"], np.float32)
        n = len(sub)
        feats, union = self.model.extract(image, np.concatenate([sub, obj]), np.stack([np.arange(n), np.arange(n) + n], 1))
        return [{"sample_id": r["sample_id"][i], "image_id": r["image_id"], "split": r["split"],
                 "subject": r["subject"][i], "object": r["object"][i], "predicate": r["predicate"][i],
                 "subject_box": sub[i], "object_box": obj[i], "subject_feature": feats[i],
                 "object_feature": feats[n + i], "union_feature": union[i]} for i in range(n)]


def feature_dataset(cfg: FeaturesConfig, inputs: pa.Table, kind: str) -> ray.data.Dataset:
    """Input rows -> actor-pool map_batches -> store rows, in input order."""
    k = cfg.images_per_call
    blocks = [inputs.slice(i, k) for i in range(0, inputs.num_rows, k)] or [inputs]
    ds = carry_input_errors(ray.data.from_arrow(blocks))
    ds.context.execution_options.preserve_order = True
    return ds.map_batches(FeatureActor, fn_constructor_kwargs={"detector": to_dict(cfg.detector), "kind": kind,
                                                               "dtype": cfg.dtype, "threads": actor_threads(cfg.cpus_per_actor),
                                                               "device": actor_device(cfg.gpus_per_actor),
                                                               "detections": bool(cfg.detections)},
                          compute=ray.data.ActorPoolStrategy(size=cfg.actors), num_cpus=cfg.cpus_per_actor,
                          num_gpus=cfg.gpus_per_actor, batch_size=k, batch_format="pyarrow")


def _check_images(table: pa.Table) -> None:
    """Every image named by the annotations exists (checked before any actor starts)."""
    missing = [p for p in table.column("path").to_pylist() if not Path(p).is_file()]
    if missing:
        raise DataError(missing[0], f"image file missing ({len(missing)} of {table.num_rows} images missing)",
                        "the image named by the annotations")


def write_features(cfg: FeaturesConfig) -> Path:
    """Run the feature stage for every split of `cfg` into `cfg.out` (atomic directory swap); one actor pool."""
    kind = SCENE_GRAPH if cfg.dataset == "vg150" else RELATION_SAMPLE
    build = vg_inputs if cfg.dataset == "vg150" else gqa_inputs
    tables, objects, predicates, reader = [], [], [], {}
    for split in cfg.splits:
        table, objects, predicates, reader[split] = build(cfg, split)
        if table.num_rows == 0:
            raise DataError(f"{cfg.data} split {split!r}", "no images", "at least one annotated image")
        tables.append(table)
    inputs = pa.concat_tables(tables)
    if cfg.detections:
        inputs = with_detections(cfg, inputs, reader)
    _check_images(inputs)
    probe = BoxFeatureExtractor(cfg.detector)  # fails fast on a bad checkpoint, records what it filled
    meta = {"dataset": cfg.dataset, "source": str(cfg.data), "detector": to_dict(cfg.detector),
            "detector_loaded_parts": probe.loaded_parts, "config_hash": config_hash(cfg), "reader": reader}
    buffers: dict[str, list[pa.Table]] = defaultdict(list)
    with atomic_dir(cfg.out) as tmp:
        writer = StoreWriter(tmp, kind, cfg.detector.feature_dim, objects, predicates, dtype=cfg.dtype, meta=meta,  # type: ignore[arg-type]
                             detections=bool(cfg.detections))
        with input_errors_raised(), tqdm(total=inputs.num_rows, desc=f"features {cfg.dataset}", unit="img") as bar:
            for out in feature_dataset(cfg, inputs, kind).iter_batches(batch_size=None, batch_format="pyarrow"):
                bar.update(len(set(out.column("image_id").to_pylist())))
                for split in set(out.column("split").to_pylist()):
                    buffers[split].append(out.filter(pc.equal(out.column("split"), split)))
                    _flush(writer, split, buffers[split], cfg.shard_rows)
        for split in cfg.splits:
            _flush(writer, split, buffers[split], cfg.shard_rows, final=True)
        writer.close()
    return Path(cfg.out)


def with_detections(cfg: FeaturesConfig, inputs: pa.Table, reader: dict) -> pa.Table:
    """`inputs` with each image's detected boxes (`det_boxes`, from `cfg.detections`); counts per split the
    images the detector left without a box into `reader`."""
    ids = inputs.column("image_id").to_pylist()
    dets = read_coco_detections(cfg.detections, set(ids), cfg.max_detections, cfg.min_detection_score)
    empty = np.zeros((0, 4), np.float32)
    column = pa.array([dets.get(i, empty).tolist() for i in ids], pa.list_(BOX))
    for split in cfg.splits:
        rows = [i for i, s in zip(ids, inputs.column("split").to_pylist()) if s == split]
        reader[split]["images_without_detections"] = sum(i not in dets for i in rows)
    return inputs.append_column("det_boxes", column)


def _flush(writer: StoreWriter, split: str, buffer: list[pa.Table], shard_rows: int, final: bool = False) -> None:
    """Write full shards of `shard_rows` rows from `buffer` (emptied in place); with `final`, the rest too."""
    if not buffer:
        return
    table, start = pa.concat_tables(buffer), 0
    while table.num_rows - start >= shard_rows or (final and start < table.num_rows):
        writer.write(split, table.slice(start, shard_rows))
        start += shard_rows
    buffer[:] = [table.slice(start)] if start < table.num_rows else []


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; errors print one line and exit 2."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=DATASETS, required=True)
    ap.add_argument("--data", required=True, help="annotation directory (VG-150 h5/json or GQA-LT json)")
    ap.add_argument("--images", required=True, help="image directory")
    ap.add_argument("--out", required=True, help="feature store directory (replaced atomically)")
    ap.add_argument("--config", help="YAML with FeaturesConfig fields")
    ap.add_argument("--ray-address", help="join this Ray cluster instead of starting a local one")
    ap.add_argument("overrides", nargs="*", help="key=value, e.g. detector.backbone=vgg16 actors=2")
    args = ap.parse_args(argv)
    overrides = [f"dataset={args.dataset}", f"data={args.data}", f"images={args.images}", f"out={args.out}",
                 *args.overrides]
    def action() -> None:
        cfg = load_config(FeaturesConfig, args.config, overrides)
        init_ray(args.ray_address)
        print(json.dumps({"store": str(write_features(cfg))}))

    return exit_code(action)


if __name__ == "__main__":
    sys.exit(main())
