"""Tiny planted scene-graph stores shared by the HML pipeline and sweep tests."""
from __future__ import annotations

from pathlib import Path

from components.data.planted_detections import PlantedDetectionConfig, simulate_detections
from components.data.planted_sgg import PlantedSGGConfig, build_world, generate_split
from components.data.store import FeatureStore, StoreWriter, scene_graphs
from pipelines.hml_predict import evaluation_tables


def write_tiny_store(root: Path, shard_size: int, detections: bool = False) -> Path:
    """A tiny planted scene-graph store (24 train images in shards of `shard_size`, 6 test images), with
    `detections` also sgg-planted-det's simulated detections."""
    cfg = PlantedSGGConfig(n_train=24, n_val=2, n_test=6, shard_size=shard_size, feature_dim=8)
    world = build_world(cfg)
    writer = StoreWriter(root, "scene_graph", cfg.feature_dim, list(world.objects), list(world.predicates),
                         detections=detections)
    for split in ("train", "test"):
        for shard in generate_split(cfg, split, world):
            if detections:
                shard = [simulate_detections(img, world, PlantedDetectionConfig(), cfg.object_noise, cfg.seed,
                                             int(img["image_id"].rsplit("-", 1)[1])) for img in shard]
            writer.write(split, shard)
    writer.close()
    return root


def store_images(store: Path, split: str, limit: int | None = None) -> list[dict]:
    """GT scene graphs of a store's split in store order (the first `limit` if set), as the evaluator reads them."""
    return [img for table in evaluation_tables(FeatureStore(store), split, limit) for img in scene_graphs(table)]
