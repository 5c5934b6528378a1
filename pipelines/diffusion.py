"""Ray layer of DiffAugment's diffusion model: training in one actor, sampling over an actor pool into shards.

Training runs `train_denoiser` inside a Ray actor with fractional CPUs, writing periodic bundle
checkpoints and the per-step loss. Sampling splits the requests into fixed shards (shard i = rows
[i*shard_size, (i+1)*shard_size)); each shard is sampled by a pool actor and written atomically as
`shard-{i:05d}.parquet` (columns sample_id, subject, object, predicate, feature). A rerun skips every
shard already complete; an actor that dies is restarted and its task retried (Ray max_restarts /
max_task_retries), and since a sample's noise depends only on (seed, sample id) the retried shard holds the
same vectors. `manifest.json` is written last and lists every shard.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Self

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from ray.util import ActorPool
from tqdm.auto import tqdm

from components.atomic import atomic_path, ensure_writable_dir, write_json
from components.code_version import code_fingerprint
from components.config import config_hash, to_dict
from components.data.store import sha256_file
from components.diffaug.diffusion import DiffusionConfig, load_bundle, save_bundle, train_denoiser
from components.diffaug.sampling import check_compute_dtype, compute_dtype, inference_bundle, sample_features
from components.errors import DataError, InputError
from components.stages import arrays_hash
from pipelines.ray_runtime import actor_device, actor_threads

REQUIRED = ("sample_id", "subject", "object", "predicate", "text")
OPTIONAL = ("text_mask", "hardness", "seed_features")
MANIFEST_FORMAT = "hmldiff.diffusion-samples/1"


def _writable(arrays: Mapping[str, np.ndarray | None]) -> dict[str, np.ndarray | None]:
    """Own copies of arrays Ray's object store hands out read-only (torch.from_numpy warns on those)."""
    return {k: None if v is None else np.array(v) for k, v in arrays.items()}


@ray.remote
class _TrainActor:
    """Runs `train_denoiser` with checkpoints every `checkpoint_every` steps into `out_dir/checkpoints`."""

    def run(self, arrays: dict, cfg: DiffusionConfig, out_dir: str, checkpoint_every: int, threads: int,
            device: str = "cpu") -> list:
        torch.set_num_threads(threads)
        losses: list[float] = []
        ckpt = Path(out_dir) / "checkpoints"
        arrays = _writable(arrays)

        def on_step(step: int, loss: float, bundle) -> None:
            losses.append(loss)
            if checkpoint_every and step % checkpoint_every == 0:
                save_bundle(bundle, ckpt / f"step-{step:07d}.safetensors")

        bundle = train_denoiser(arrays["features"], arrays["text"], arrays.get("text_mask"), arrays.get("hardness"),
                                cfg, on_step=on_step, progress=False, groups=arrays.get("groups"), device=device)
        save_bundle(bundle, Path(out_dir) / "bundle.safetensors")
        return losses


def train_diffusion_on_ray(features: np.ndarray, text: np.ndarray, text_mask: np.ndarray | None,
                           hardness: np.ndarray | None, cfg: DiffusionConfig, out_dir: str | Path,
                           cpus: float = 0.5, checkpoint_every: int = 500, groups: np.ndarray | None = None,
                           gpus: float = 0.0) -> dict:
    """Train in a Ray actor (`cpus` CPUs; on a GPU with `gpus` > 0); writes out_dir/{bundle.safetensors,
    checkpoints/, metrics.json}; returns the paths + losses. `groups`: each sample's group (relation) label,
    for `cfg.balance`."""
    out = ensure_writable_dir(out_dir)
    arrays = {"features": features, "text": text, "text_mask": text_mask, "hardness": hardness, "groups": groups}
    t0 = time.perf_counter()
    actor = _TrainActor.options(num_cpus=cpus, num_gpus=gpus).remote()
    try:
        losses = ray.get(actor.run.remote(arrays, cfg, str(out), checkpoint_every, actor_threads(cpus), actor_device(gpus)))
    finally:
        ray.kill(actor)
    metrics = {"config": to_dict(cfg), "config_hash": config_hash(cfg), "loss": losses,
               "seconds": round(time.perf_counter() - t0, 2)}
    write_json(out / "metrics.json", metrics)
    return {"bundle": str(out / "bundle.safetensors"), "metrics": str(out / "metrics.json"), "loss": losses}


def load_requests(requests: Mapping[str, np.ndarray] | str | Path) -> dict[str, np.ndarray]:
    """Validated request columns from a mapping or an .npz file (keys: sample_id, subject, object, predicate,
    text, optional text_mask, hardness, seed_features; one row per sample)."""
    if isinstance(requests, (str, Path)):
        p = Path(requests)
        if not p.is_file():
            raise InputError(str(p), "request file not found", "an .npz with sample_id, subject, object, predicate, text")
        with np.load(p, allow_pickle=False) as z:
            requests = {k: z[k] for k in z.files}
    cols = {k: np.asarray(v) for k, v in requests.items() if v is not None}
    missing = [k for k in REQUIRED if k not in cols]
    unknown = [k for k in cols if k not in REQUIRED + OPTIONAL]
    if missing or unknown:
        raise InputError("requests", f"missing columns {missing}, unknown columns {unknown}",
                         f"columns {list(REQUIRED)} plus optional {list(OPTIONAL)}")
    ids = cols["sample_id"]
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer) or (ids < 0).any():
        raise DataError("requests.sample_id", f"dtype {ids.dtype}, shape {ids.shape}", "1-D non-negative integers")
    if len(np.unique(ids)) != len(ids):
        raise DataError("requests.sample_id", "contains duplicates", "each id requested once")
    bad = [k for k, v in cols.items() if len(v) != len(ids)]
    if bad:
        raise DataError("requests", f"columns {bad} have another length than sample_id ({len(ids)})", "equal lengths")
    return cols


@ray.remote(max_restarts=3, max_task_retries=3)
class _SampleActor:
    """Samples shards with the bundle named by each call (loaded and cast to the compute dtype once, kept while
    the path stays the same) and writes each shard atomically as a parquet file."""

    def __init__(self, threads: int, device: str = "cpu") -> None:
        torch.set_num_threads(threads)
        self.device = device
        self.bundle_key: tuple[str, int, str] | None = None
        self.bundle = None

    def ready(self) -> int:
        """The actor's process id, once the process is up (its imports done): lets a pool start before it is used."""
        return os.getpid()

    def shard(self, bundle_path: str, req: dict, index: int, lo: int, hi: int, path: str, params: dict,
              dtype: str) -> dict:
        t0 = time.perf_counter()
        key = (bundle_path, Path(bundle_path).stat().st_mtime_ns, dtype)  # a rewritten bundle is loaded again
        if key != self.bundle_key:
            self.bundle = inference_bundle(load_bundle(bundle_path), dtype, self.device)  # cast and moved once
            self.bundle_key = key
        rows = _writable({k: v[lo:hi] for k, v in req.items()})  # this shard's rows only
        feats = sample_features(self.bundle, rows["text"], rows.get("text_mask"), rows.get("hardness"),
                                rows["sample_id"], rows.get("seed_features"), **params)
        table = pa.table({"sample_id": rows["sample_id"].astype(np.int64), "subject": rows["subject"],
                          "object": rows["object"], "predicate": rows["predicate"],
                          "feature": pa.FixedSizeListArray.from_arrays(pa.array(feats.reshape(-1)), feats.shape[1])})
        with atomic_path(path, suffix=".parquet") as tmp:
            pq.write_table(table, tmp)
        return {"index": index, "rows": hi - lo, "seconds": round(time.perf_counter() - t0, 3),
                "node": ray.get_runtime_context().get_node_id()}


class SamplerPool:
    """Sampling actors started once and reused by several `sample_on_ray` calls (an actor's start-up, a
    process plus the torch and diffusers imports, took 5-16 s here: paid once, not once per call)."""

    def __init__(self, num_actors: int = 2, cpus_per_actor: float = 0.5, gpus_per_actor: float = 0.0) -> None:
        if num_actors < 1 or cpus_per_actor <= 0 or gpus_per_actor < 0:
            raise InputError("SamplerPool", f"num_actors={num_actors}, cpus_per_actor={cpus_per_actor}, "
                             f"gpus_per_actor={gpus_per_actor}", "positive actors and CPUs, GPUs >= 0")
        self.device = actor_device(gpus_per_actor)
        self.actors = [_SampleActor.options(num_cpus=cpus_per_actor, num_gpus=gpus_per_actor)
                       .remote(actor_threads(cpus_per_actor), self.device) for _ in range(num_actors)]
        self.pids: list[int] = []

    def wait_ready(self) -> Self:
        """Block until every actor is up; `pids` then holds their process ids (in `actors` order)."""
        self.pids = ray.get([a.ready.remote() for a in self.actors])
        return self

    def close(self) -> None:
        """Stop the actors."""
        for a in self.actors:
            ray.kill(a)
        self.actors = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _shard_complete(path: Path, ids: np.ndarray) -> bool:
    """True when `path` is a readable shard holding exactly `ids` in order."""
    try:
        got = pq.read_table(path, columns=["sample_id"]).column("sample_id").to_numpy()
    except (OSError, pa.ArrowException):
        return False
    return len(got) == len(ids) and bool((got == ids).all())


def sample_on_ray(bundle_path: str | Path, requests: Mapping[str, np.ndarray] | str | Path, out_dir: str | Path,
                  num_actors: int = 2, shard_size: int = 1024, cpus_per_actor: float = 0.5, strength: float = 1.0,
                  batch_size: int = 256, guidance_scale: float | None = None, progress: bool = True,
                  pool: SamplerPool | None = None, requests_hash: str | None = None, dtype: str | None = None,
                  gpus_per_actor: float = 0.0) -> dict:
    """Sample every request on a Ray actor pool into idempotent parquet shards; returns (and writes) the manifest.
    `pool`: actors to use (and leave running); without it a pool of `num_actors` (each `cpus_per_actor` CPUs,
    `gpus_per_actor` GPUs: on a GPU when > 0) is started for this call.
    `requests_hash`: `arrays_hash(requests)` if the caller has it (it keys the shards), else computed here.
    `dtype`: compute dtype of every actor ('float32' / 'bfloat16'); None resolves the bundle's config here,
    in the driver, once (an actor resolving 'auto' by its own CPU could mix precisions across a cluster's nodes);
    it keys the shards and is recorded in the manifest, as is the device type."""
    if num_actors < 1 or shard_size < 1 or cpus_per_actor <= 0:
        raise InputError("sample_on_ray", f"num_actors={num_actors}, shard_size={shard_size}, "
                         f"cpus_per_actor={cpus_per_actor}", "positive values")
    req = load_requests(requests)
    bundle = load_bundle(bundle_path)  # fail fast in the driver on a bad bundle
    device = pool.device if pool is not None else actor_device(gpus_per_actor)
    dtype = compute_dtype(bundle, device) if dtype is None else check_compute_dtype(dtype, "sample_on_ray dtype")
    out = ensure_writable_dir(out_dir)
    params = {"strength": strength, "batch_size": batch_size, "guidance_scale": guidance_scale}
    ids = req["sample_id"]
    # the bundle's weights, every request array (not only the ids) and the sampler's code: shards of another
    # request or code version are never reused
    fingerprint = config_hash({"bundle": sha256_file(Path(bundle_path)), "requests": requests_hash or arrays_hash(req),
                               "shard_size": shard_size, "strength": strength, "guidance_scale": guidance_scale,
                               "dtype": dtype, "device": device, "code": code_fingerprint()})
    req_file = out / "request.json"
    if req_file.exists() and json.loads(req_file.read_text()).get("fingerprint") != fingerprint:
        raise InputError(str(out), "holds shards of another request, bundle, sampling setting or code version",
                         "an empty directory or the same request with the same code (to resume)")
    write_json(req_file, {"fingerprint": fingerprint, "bundle": str(bundle_path), "n": len(ids)})
    bounds = [(i, lo, min(lo + shard_size, len(ids))) for i, lo in enumerate(range(0, len(ids), shard_size))]
    paths = {i: out / f"shard-{i:05d}.parquet" for i, _, _ in bounds}
    todo = [b for b in bounds if not _shard_complete(paths[b[0]], ids[b[1]:b[2]])]
    t0 = time.perf_counter()
    nodes: dict[int, str] = {}  # shard -> Ray node that sampled it in this call (skipped shards: absent)
    seconds: dict[int, float] = {}  # shard -> the actor's sampling + writing seconds (skipped shards: absent)
    if todo:
        ref = ray.put(req)
        own = pool is None
        sampler = SamplerPool(min(num_actors, len(todo)), cpus_per_actor, gpus_per_actor) if own else pool
        try:
            work = ActorPool(list(sampler.actors)).map_unordered(
                lambda a, b: a.shard.remote(str(bundle_path), ref, b[0], b[1], b[2], str(paths[b[0]]), params, dtype),
                todo)
            for done in tqdm(work, total=len(todo), desc="diffusion shards", disable=not progress):
                nodes[done["index"]] = done["node"]
                seconds[done["index"]] = done["seconds"]
        finally:
            if own:
                sampler.close()
    manifest = {"format": MANIFEST_FORMAT, "bundle": str(bundle_path), "bundle_config_hash": config_hash(bundle.cfg),
                "n_samples": len(ids), "feature_dim": bundle.model.feature_dim, "shard_size": shard_size,
                "params": params, "dtype": dtype, "device": device, "skipped_shards": len(bounds) - len(todo), "seconds": round(time.perf_counter() - t0, 3),
                "shards": [{"index": i, "path": paths[i].name, "rows": hi - lo, "first_id": int(ids[lo]),
                            "last_id": int(ids[hi - 1]), "node": nodes.get(i), "seconds": seconds.get(i)}
                           for i, lo, hi in bounds]}
    write_json(out / "manifest.json", manifest)
    return manifest


def load_samples(out_dir: str | Path) -> pa.Table:
    """All shards listed by `out_dir/manifest.json`, concatenated in shard order (refuses a missing shard)."""
    out = Path(out_dir)
    mf = out / "manifest.json"
    if not mf.is_file():
        raise DataError(str(mf), "manifest not found (sampling incomplete?)", "a directory written by sample_on_ray")
    manifest = json.loads(mf.read_text())
    tables = []
    for s in manifest["shards"]:
        p = out / s["path"]
        if not p.is_file():
            raise DataError(str(p), "shard listed in the manifest is missing", "every listed shard present")
        tables.append(pq.read_table(p))
    return pa.concat_tables(tables)


def load_features(out_dir: str | Path, sample_ids: np.ndarray) -> np.ndarray:
    """(N, D) float32 generated features of `out_dir` in the order of `sample_ids` (each id exactly once)."""
    table = load_samples(out_dir)
    ids = table.column("sample_id").to_numpy()
    feats = np.asarray(table.column("feature").combine_chunks().flatten().to_numpy(), np.float32).reshape(len(ids), -1)
    order = np.argsort(ids)
    if not np.array_equal(ids[order], sample_ids):
        raise DataError(str(out_dir), "sampled ids differ from the requests", "one generated feature per request")
    return feats[order]
