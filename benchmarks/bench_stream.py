"""Ray Data streaming of a scene-graph feature store into training vs a plain pyarrow -> torch loop,
measured side by side on the same store, the same per-image decoding, pair sampling and training step.

plain: pyarrow.parquet reads each shard in the training thread -> store.scene_graphs -> batches of
images -> sample_pairs -> forward/backward/Adam of an MLP predictor.
ours:  pipelines.streaming.dataset_from_store (validated once, as pipelines/hml.py does) on a local Ray
instance -> iter_scene_graph_batches (Ray reads and slices in background tasks, prefetching) -> the
same sample_pairs and training step.
Each epoch is timed end to end; plain and ours alternate epoch by epoch after one untimed warm-up epoch
each, and the median epoch gives images/s. The "data" variants drop the training step (read + decode
to per-image dicts + pair sampling only). "steady" rates leave out the wait for each epoch's first
batch (Ray Data plans and launches read tasks anew every epoch: a fixed cost per pass that small stores
cannot amortise); the first-batch waits are reported too. Ratios > 1 mean streaming is faster.
"""
from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from tqdm import tqdm

from components.data.planted_sgg import PlantedSGGConfig
from components.data.store import FeatureStore, scene_graphs
from components.models.base import SGBatch
from components.models.pairs import sample_pairs
from components.models.registry import build_predictor
from pipelines.prepare_data import PrepareDataConfig, write_store

BATCH_SIZE = 8


def make_store(root: Path, n_images: int, shard_size: int, feature_dim: int) -> Path:
    """A sgg-planted store of `n_images` training images (val/test: one image each) under `root`."""
    sgg = PlantedSGGConfig(n_train=n_images, n_val=1, n_test=1, shard_size=shard_size, feature_dim=feature_dim)
    return write_store(PrepareDataConfig(dataset="sgg-planted", out=str(root / "sgg"), sgg=sgg))


def plain_batches(store_root: Path, batch_size: int) -> Iterator[list[dict]]:
    """Per-image dicts, `batch_size` at a time, from pyarrow.parquet reads of each shard in turn."""
    for path in FeatureStore(store_root).paths("train"):
        graphs = list(scene_graphs(pq.read_table(path)))
        for i in range(0, len(graphs), batch_size):
            yield graphs[i:i + batch_size]


def ray_batches(dataset, batch_size: int) -> Iterator[list[dict]]:
    """Per-image dicts, `batch_size` at a time, streamed by Ray Data (pipelines.streaming)."""
    from pipelines.streaming import iter_scene_graph_batches

    yield from iter_scene_graph_batches(dataset, batch_size)


def training_step(num_objects: int, num_predicates: int, feature_dim: int) -> Callable[[SGBatch], None]:
    """Forward/backward/Adam of a small MLP predictor on one SGBatch (shared by both loops)."""
    torch.manual_seed(0)
    model = build_predictor("mlp", num_objects, num_predicates, feature_dim, hidden_dim=64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(batch: SGBatch) -> None:
        loss = F.cross_entropy(model(batch), batch.pair_labels, ignore_index=-1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def epoch(batches: Iterator[list[dict]], step: Callable[[SGBatch], None] | None,
          rng: np.random.Generator) -> tuple[int, float, float]:
    """(images, seconds, seconds until the first batch arrived) of one pass: pair sampling and
    (optionally) the training step per batch."""
    n, t0, first = 0, time.perf_counter(), None
    for images in batches:
        first = time.perf_counter() - t0 if first is None else first
        batch = sample_pairs(images, rng, 64, 64)
        if step is not None:
            step(batch)
        n += len(images)
    return n, time.perf_counter() - t0, first or 0.0


def measure(loops: dict[str, Callable[[], tuple[int, float, float]]], repeats: int, n_images: int
            ) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, list[float]]]:
    """Per-variant images/s, steady images/s (after the first batch) and first-batch waits over `repeats`
    rounds, each variant once per round in alternating order, after one warm-up round (which runs the
    Ray data epoch to start Ray's workers; the Ray train epoch reuses them)."""
    rates: dict[str, list[float]] = {k: [] for k in loops}
    steady: dict[str, list[float]] = {k: [] for k in loops}
    latency: dict[str, list[float]] = {k: [] for k in loops}
    names = list(loops)
    for r in tqdm(range(repeats + 1), desc="stream epochs", leave=False):
        order = [k for k in names if k != "ray_train"] if r == 0 else names if r % 2 else names[::-1]
        for k in order:
            n, sec, first = loops[k]()
            if n != n_images:
                raise RuntimeError(f"{k} saw {n} images, expected {n_images}")
            if r > 0:
                rates[k].append(n / sec)
                steady[k].append((n - BATCH_SIZE) / max(sec - first, 1e-9))
                latency[k].append(first)
    return rates, steady, latency


def _start_ray() -> bool:
    """Start a local Ray (2 CPUs) unless one is running; True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # one plan/finish line per epoch otherwise
    return True


def run(quick: bool = False) -> dict:
    """Images/s of plain vs Ray Data streaming, with and without the training step, and their ratios."""
    import ray

    from pipelines.streaming import dataset_from_store

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the training step runs on one thread in both loops; restored below
    n_images, shard_size, repeats = (240, 60, 1) if quick else (3000, 250, 5)
    feature_dim = 64
    load_before = os.getloadavg()[0]
    started = _start_ray()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = make_store(Path(tmp), n_images, shard_size, feature_dim)
            manifest = FeatureStore(root).manifest
            step = training_step(len(manifest.objects), len(manifest.predicates), feature_dim)
            t0 = time.perf_counter()
            ds = dataset_from_store(root, "train")  # validated once per run, as in pipelines/hml.py
            check_s = time.perf_counter() - t0
            rng = np.random.default_rng(0)
            loops = {
                "plain_train": lambda: epoch(plain_batches(root, BATCH_SIZE), step, rng),
                "ray_train": lambda: epoch(ray_batches(ds, BATCH_SIZE), step, rng),
                "plain_data": lambda: epoch(plain_batches(root, BATCH_SIZE), None, rng),
                "ray_data": lambda: epoch(ray_batches(ds, BATCH_SIZE), None, rng),
            }
            rates, steady, latency = measure(loops, repeats, n_images)
    finally:
        torch.set_num_threads(threads)
        if started:
            ray.shutdown()
    med = {k: statistics.median(v) for k, v in rates.items()}
    ste = {k: statistics.median(v) for k, v in steady.items()}
    return {
        "stream_ratio": med["ray_train"] / med["plain_train"],
        "stream_data_ratio": med["ray_data"] / med["plain_data"],
        "stream_steady_ratio": ste["ray_train"] / ste["plain_train"],
        "stream_steady_data_ratio": ste["ray_data"] / ste["plain_data"],
        "stream_ray_first_batch_seconds": statistics.median(latency["ray_train"] + latency["ray_data"]),
        "stream_plain_first_batch_seconds": statistics.median(latency["plain_train"] + latency["plain_data"]),
        "stream_plain_train_images_per_s": med["plain_train"],
        "stream_ray_train_images_per_s": med["ray_train"],
        "stream_plain_data_images_per_s": med["plain_data"],
        "stream_ray_data_images_per_s": med["ray_data"],
        "stream_store_check_seconds": check_s,
        "stream_images": float(n_images),
        "stream_loadavg_1min": max(load_before, os.getloadavg()[0]),  # other processes on this machine
        "stream_timed_epochs": float(repeats),
    }


if __name__ == "__main__":
    from benchmarks.single import main

    main(run, __doc__)
