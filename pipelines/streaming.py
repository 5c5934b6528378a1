"""Stream a feature store through Ray Data: validated shards -> Dataset -> per-image dicts or torch batches.

Works on a Dataset in the driver and on `ray.train.get_dataset_shard(...)` iterators in workers alike.
Ray Train's default DataConfig splits with `equal=True`, which silently drops up to world_size - 1
rows (13 rows on 2 workers -> 6 + 6): pass `dataset_config=ExactSplitDataConfig()` to keep every row.
Both hand blocks out in arrival order; where a resumed run must see the same rows in the same order as
an uninterrupted one, give each rank its own fixed part instead (`per_rank_datasets` + `PerRankDataConfig`).
"""
from __future__ import annotations

import zlib
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


def _checked_paths(store_root: str | Path, split: str, deep_check: bool) -> list[str]:
    """The shard paths of `split`, after FeatureStore validates them (checksums, schema, ranges)."""
    store = FeatureStore(store_root)
    paths = store.paths(split)
    if deep_check:
        for entry in store.manifest.splits[split]:
            store.read_shard(entry)
    return paths


def dataset_from_store(store_root: str | Path, split: str, deep_check: bool = True) -> Dataset:
    """A Dataset over the shards of `split`, after FeatureStore validates them (checksums, schema, ranges)."""
    return ray.data.read_parquet(_checked_paths(store_root, split, deep_check))


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


def _rows_of_part(batch: pa.Table, part: int, parts: int) -> pa.Table:
    """The rows of `batch` whose image_id hashes (crc32, stable across processes) to `part` of `parts`."""
    keep = [zlib.crc32(str(i).encode()) % parts == part for i in batch.column("image_id").to_pylist()]
    return batch.filter(pa.array(keep, pa.bool_()))


def per_rank_datasets(store_root: str | Path, split: str, world_size: int, deep_check: bool = True) -> list[Dataset]:
    """Rank r's fixed, disjoint part of `split` at index r; together they hold every row once.

    With at least `world_size` shards, rank r reads shards r, r + world_size, ... (each file read by one
    rank); with fewer, every rank reads all shards and keeps the images whose id hashes to it. Iterated
    under `PerRankDataConfig` (order preserved), a rank sees the same rows in the same order on every run.
    """
    paths = _checked_paths(store_root, split, deep_check)
    if len(paths) >= world_size:
        return [ray.data.read_parquet(paths[r::world_size]) for r in range(world_size)]
    return [ray.data.read_parquet(paths).map_batches(_rows_of_part, fn_kwargs={"part": r, "parts": world_size},
                                                    batch_format="pyarrow", batch_size=None)
            for r in range(world_size)]


class PerRankDataConfig(DataConfig):
    """Rank r iterates `parts[name][r]` (whole, order preserved) where the trainer's dataset `name` would be
    split: the same rows in the same order on every run, so a stage resumed after a worker failure replays
    the original. The trainer's own dataset of that name only names the stream (pass the whole split).

    Ray Data's progress bar is off for these streams: a worker stops mid-stream when its step budget is
    reached, and the bars of finished streams stayed on the driver's console, redrawn under every later
    log line until the driver exited (~2,200 stale lines in a `make run`); the train loop's own step bar
    shows the progress."""

    def __init__(self, parts: dict[str, list[Dataset]]) -> None:
        super().__init__()
        self.parts = parts

    def configure(self, datasets: dict[str, Dataset], world_size: int, worker_handles: Any,
                  worker_node_ids: Any, **kwargs: Any) -> list[dict[str, DataIterator]]:
        out: list[dict[str, DataIterator]] = [{} for _ in range(world_size)]
        for name in datasets:
            parts = self.parts.get(name, [])
            if len(parts) != world_size:
                raise ValueError(f"dataset {name!r}: PerRankDataConfig holds {len(parts)} parts, expected one per "
                                 f"worker ({world_size})")
            for r, ds in enumerate(parts):
                ds = ds.copy(ds)
                options = self._resolve_execution_options(name)
                options.preserve_order = True
                ds.context.execution_options = options
                ds.context.enable_progress_bars = False
                out[r][name] = ds.iterator()
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
