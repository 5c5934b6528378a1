"""Stream a feature store through Ray Data: validated shards -> Dataset -> per-image dicts or torch batches.

Works on a Dataset in the driver and on `ray.train.get_dataset_shard(...)` iterators in workers alike.
Ray Train's default DataConfig splits with `equal=True`, which silently drops up to world_size - 1
rows (13 rows on 2 workers -> 6 + 6): pass `dataset_config=ExactSplitDataConfig()` to keep every row.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray
import torch
from ray.data import DataIterator, Dataset
from ray.data.collate_fn import ArrowBatchCollateFn
from ray.train import DataConfig

from components.data.collate import relation_tensors, scene_graph_rows
from components.data.store import FeatureStore


def dataset_from_store(store_root: str | Path, split: str, deep_check: bool = True) -> Dataset:
    """A Dataset over the shards of `split`, after FeatureStore validates them (checksums, schema, ranges)."""
    store = FeatureStore(store_root)
    paths = store.paths(split)
    if deep_check:
        for entry in store.manifest.splits[split]:
            store.read_shard(entry)
    return ray.data.read_parquet(paths)


class ExactSplitDataConfig(DataConfig):
    """DataConfig whose shards keep every row (streaming_split equal=False; balanced by blocks, so small
    datasets can land on one worker): needed wherever a dropped row would change a number (evaluation)."""

    def configure(self, datasets: dict[str, Dataset], world_size: int, worker_handles: Any,
                  worker_node_ids: Any, **kwargs: Any) -> list[dict[str, DataIterator]]:
        out: list[dict[str, DataIterator]] = [{} for _ in range(world_size)]
        for name, ds in datasets.items():
            ds = ds.copy(ds)
            ds.context.execution_options = DataConfig.default_ingest_options()
            for i, shard in enumerate(ds.streaming_split(world_size, equal=False, locality_hints=worker_node_ids)):
                out[i][name] = shard
        return out


class RelationCollate(ArrowBatchCollateFn):
    """iter_torch_batches collate: an Arrow batch of relation samples -> dict of float32/int64 tensors."""

    def __call__(self, batch: pa.Table) -> dict[str, torch.Tensor]:
        return relation_tensors(batch)


def iter_scene_graph_batches(data: Dataset | DataIterator, batch_size: int) -> Iterator[list[dict]]:
    """Lists of per-image scene graphs (layout of store.scene_graphs), `batch_size` images each."""
    for batch in data.iter_batches(batch_size=batch_size, batch_format="pyarrow"):
        yield scene_graph_rows(batch)


def iter_relation_batches(data: Dataset | DataIterator, batch_size: int,
                          drop_last: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Dicts of tensors (features float32 (B, D), labels int64 (B,)) of `batch_size` relation samples."""
    yield from data.iter_torch_batches(batch_size=batch_size, collate_fn=RelationCollate(), drop_last=drop_last)
