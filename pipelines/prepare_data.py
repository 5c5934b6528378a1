"""Write a planted benchmark (sgg-planted or vrr-planted) as a feature store, shard by shard, atomically.

    python pipelines/prepare_data.py --dataset sgg-planted --out data/sgg [--seed S] [--scale X]
        [--config cfg.yaml] [key=value ...]     (keys of PrepareDataConfig, e.g. sgg.shard_size=250)

`sgg-planted-det` writes sgg-planted's images (the same GT) plus a simulated detector's boxes and features
(components/data/planted_detections.py), the store HML's `mode=sgdet` trains and evaluates on.

The store is built in a temporary directory beside `--out` and renamed onto it when complete, so a
crash never leaves a half-written store under `--out`. The benchmark parameters are the calibrated,
fixed defaults of components/data/planted_{sgg,vrr}.py; changing them makes a different benchmark
(the manifest's `meta.config` records every parameter and `meta.config_hash` identifies it).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from components.atomic import atomic_dir
from components.config import config_hash, load_config, to_dict
from components.data import planted_sgg, planted_vrr
from components.data.planted_detections import PlantedDetectionConfig, simulate_detections
from components.data.planted_sgg import PlantedSGGConfig
from components.data.planted_vrr import PlantedVRRConfig
from components.data.schema import RELATION_SAMPLE, SCENE_GRAPH
from components.data.store import FeatureStore, StoreWriter, relation_arrays, scene_graphs
from components.errors import ConfigError
from pipelines.cli import exit_code

DATASETS = ("sgg-planted", "sgg-planted-det", "vrr-planted")
SPLITS = ("train", "val", "test")


@dataclass
class PrepareDataConfig:
    """Which planted benchmark to write, where, and its parameters."""

    dataset: str = field(default="sgg-planted", metadata={"choices": DATASETS})
    out: str = ""
    dtype: str = field(default="float32", metadata={"choices": ("float16", "float32")})
    sgg: PlantedSGGConfig = field(default_factory=PlantedSGGConfig)
    vrr: PlantedVRRConfig = field(default_factory=PlantedVRRConfig)
    det: PlantedDetectionConfig = field(default_factory=PlantedDetectionConfig)  # sgg-planted-det's detector

    def validate(self) -> None:
        if not self.out:
            raise ConfigError("out", "no output directory given", "--out DIR")

    def benchmark(self) -> PlantedSGGConfig | PlantedVRRConfig:
        """The chosen dataset's parameters."""
        return self.vrr if self.dataset == "vrr-planted" else self.sgg


def write_store(cfg: PrepareDataConfig) -> Path:
    """Generate every split of the chosen benchmark into `cfg.out` (atomic directory swap); return the path."""
    bench = cfg.benchmark()
    detections = cfg.dataset == "sgg-planted-det"
    if cfg.dataset != "vrr-planted":
        world = planted_sgg.build_world(cfg.sgg)
        kind, objects, predicates, gen = SCENE_GRAPH, world.objects, world.predicates, planted_sgg.generate_split
        extra = {"parents": planted_sgg.PLANTED_PARENTS}
        if detections:
            gen = _with_detections(cfg.det)
            extra.update(detector=to_dict(cfg.det), detector_hash=config_hash(cfg.det))
    else:
        world = planted_vrr.build_vrr_world(cfg.vrr)
        kind, objects, predicates, gen = RELATION_SAMPLE, world.objects, world.predicates, planted_vrr.generate_split
        extra = {}
    meta = {"dataset": cfg.dataset, "config": to_dict(bench), "config_hash": config_hash(bench), **extra}
    sizes = bench.split_sizes()
    with atomic_dir(cfg.out) as tmp:
        writer = StoreWriter(tmp, kind, bench.feature_dim, objects, predicates, dtype=cfg.dtype, meta=meta,
                             detections=detections)
        for split in SPLITS:
            with tqdm(total=sizes[split], desc=f"{cfg.dataset} {split}", unit="row") as bar:
                for rows in gen(bench, split, world):
                    writer.write(split, rows)
                    bar.update(len(rows))
        writer.close()
    return Path(cfg.out)


def _with_detections(det: PlantedDetectionConfig):
    """A `generate_split` of sgg-planted whose images also carry the simulated detector's output."""
    def gen(bench: PlantedSGGConfig, split: str, world: planted_sgg.World):
        start = 0
        for rows in planted_sgg.generate_split(bench, split, world):
            yield [simulate_detections(img, world, det, bench.object_noise, bench.seed, start + i)
                   for i, img in enumerate(rows)]
            start += len(rows)
    return gen


def summarize(root: Path) -> dict:
    """Rows per split and label statistics of a written store (read back and validated)."""
    store = FeatureStore(root)
    out: dict = {"root": str(root), "kind": store.manifest.kind, "feature_dim": store.manifest.feature_dim,
                 "config_hash": store.manifest.meta.get("config_hash"), "splits": {}}
    for split in store.splits:
        table = store.read(split)
        if store.manifest.kind == SCENE_GRAPH:
            graphs = list(scene_graphs(table))
            rels = np.concatenate([g["rels"] for g in graphs])
            fine = np.concatenate([g["rel_fine"] for g in graphs])
            out["splits"][split] = {
                "images": len(graphs), "objects_per_image": round(float(np.mean([len(g["labels"]) for g in graphs])), 2),
                "relations_per_image": round(len(rels) / len(graphs), 2),
                "annotated_coarse_of_fine": round(float(np.mean(rels[:, 2] != fine)), 3),
                "predicates_present": len(np.unique(rels[:, 2]))}
            if store.manifest.detections:
                out["splits"][split].update(detection_summary(graphs))
        else:
            arr = relation_arrays(table)
            counts = np.bincount(arr["predicate"], minlength=len(store.manifest.predicates))
            out["splits"][split] = {"samples": int(table.num_rows), "predicates_present": int((counts > 0).sum()),
                                    "max_over_min_predicate_count": round(float(counts.max() / max(counts[counts > 0].min(), 1)), 1)}
    return out


def detection_summary(graphs: list[dict]) -> dict:
    """Detections per image, the share of GT objects some detection overlaps at IoU >= 0.5 (as evaluation
    matches them) and the share of GT triplets with both objects so overlapped (SGDet's recall ceiling)."""
    from components.evaluation.sgg import box_iou

    hit, objects, triplets, kept = 0, 0, 0, 0
    for g in graphs:
        found = (box_iou(g["boxes"], g["det_boxes"]) >= 0.5).any(1) if len(g["det_boxes"]) else np.zeros(len(g["boxes"]), bool)
        hit, objects = hit + int(found.sum()), objects + len(found)
        triplets += len(g["rels"])
        kept += int((found[g["rels"][:, 0]] & found[g["rels"][:, 1]]).sum())
    return {"detections_per_image": round(float(np.mean([len(g["det_boxes"]) for g in graphs])), 2),
            "objects_detected": round(hit / max(objects, 1), 3), "triplets_detectable": round(kept / max(triplets, 1), 3)}


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; errors print one line and exit 2."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=DATASETS, required=True)
    ap.add_argument("--out", required=True, help="store directory (replaced atomically)")
    ap.add_argument("--seed", type=int, help="benchmark seed (default 0)")
    ap.add_argument("--scale", type=float, help="multiplies every split size (default 1)")
    ap.add_argument("--config", help="YAML with PrepareDataConfig fields")
    ap.add_argument("overrides", nargs="*", help="key=value, e.g. sgg.shard_size=250 dtype=float16")
    args = ap.parse_args(argv)
    key = "vrr" if args.dataset == "vrr-planted" else "sgg"
    overrides = [f"dataset={args.dataset}", f"out={args.out}", *args.overrides]
    overrides += [f"{key}.seed={args.seed}"] if args.seed is not None else []
    overrides += [f"{key}.scale={args.scale}"] if args.scale is not None else []
    return exit_code(lambda: print(json.dumps(summarize(write_store(
        load_config(PrepareDataConfig, args.config, overrides))), indent=1)))


if __name__ == "__main__":
    sys.exit(main())
