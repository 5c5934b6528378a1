"""Diffusion sampling benchmark: Ray actor pool vs one in-process loop, and achieved FLOP/s vs the matmul ceiling.

`sampling_pool_ratio` = vectors/s of `pipelines.diffusion.sample_on_ray` (one 1-thread actor per core,
parquet shards written, actor start-up included) / vectors/s of `sample_features` in this process with
torch threads = cores (goal >= 0.9). `sampling_flops_fraction` = denoiser matmul FLOPs (counted by
torch.utils.flop_counter.FlopCounterMode on one forward, times steps and the 2x of guidance) per second of
the in-process loop / this machine's matmul ceiling in the same dtype, measured in the same run (goal
>= 0.7). The model is untrained (speed does not depend on the weights).
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.machine import matmul_ceiling
from components.diffaug.diffusion import DiffusionBundle, DiffusionConfig, autocast_dtype, build_denoiser, save_bundle
from components.diffaug.sampling import sample_features

FEATURE_DIM, COND_DIM, TEXT_TOKENS, HARDNESS_DIM = 128, 384, 3, 32


def _setup(quick: bool) -> tuple[DiffusionBundle, dict, int]:
    cfg = DiffusionConfig(hidden=256 if quick else 512, layers=4, heads=8, tokens=8 if quick else 16,
                          num_inference_steps=4 if quick else 20, guidance_scale=2.0, dtype="auto")
    torch.manual_seed(0)
    model = build_denoiser(cfg, FEATURE_DIM, COND_DIM, HARDNESS_DIM).eval()
    bundle = DiffusionBundle(model, np.zeros(FEATURE_DIM, np.float32), np.ones(FEATURE_DIM, np.float32), cfg)
    n = 512 if quick else 8192
    rng = np.random.default_rng(0)
    req = {"sample_id": np.arange(n), "subject": rng.integers(0, 150, n), "object": rng.integers(0, 150, n),
           "predicate": rng.integers(0, 50, n), "text": rng.normal(size=(n, TEXT_TOKENS, COND_DIM)).astype(np.float32),
           "text_mask": np.ones((n, TEXT_TOKENS), bool), "hardness": rng.random((n, HARDNESS_DIM)).astype(np.float32)}
    return bundle, req, 256 if quick else 512


def _flops_per_sample(bundle: DiffusionBundle, req: dict, batch: int) -> float:
    """Matmul FLOPs of one full sampling chain per sample (forward count x steps x guidance factor)."""
    m = bundle.model
    dtype = autocast_dtype(bundle.cfg)
    with torch.no_grad(), FlopCounterMode(display=False) as fc, \
            torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        m(torch.randn(batch, FEATURE_DIM), torch.full((batch,), 500), torch.from_numpy(req["text"][:batch]),
          torch.from_numpy(req["text_mask"][:batch]), torch.from_numpy(req["hardness"][:batch]))
    guided = 2 if bundle.cfg.guidance_scale != 1.0 else 1
    return fc.get_total_flops() / batch * bundle.cfg.num_inference_steps * guided


def run(quick: bool = False) -> dict:
    """Measure pool vs in-process sampling throughput and the FLOP/s fraction of the matmul ceiling."""
    import ray

    from pipelines.diffusion import sample_on_ray

    cores = os.cpu_count() or 1
    old_threads = torch.get_num_threads()
    torch.set_num_threads(cores)
    bundle, req, batch = _setup(quick)
    dtype = autocast_dtype(bundle.cfg)
    n = len(req["sample_id"])
    try:
        sample_features(bundle, req["text"][:batch], req["text_mask"][:batch], req["hardness"][:batch],
                        req["sample_id"][:batch], batch_size=batch)  # warm-up
        t0 = time.perf_counter()
        sample_features(bundle, req["text"], req["text_mask"], req["hardness"], req["sample_id"], batch_size=batch)
        t_inproc = time.perf_counter() - t0
        flops = _flops_per_sample(bundle, req, batch) * n
        ceiling = matmul_ceiling(dtype)
    finally:
        torch.set_num_threads(old_threads)
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=cores, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = save_bundle(bundle, Path(tmp) / "bundle.safetensors")
            t0 = time.perf_counter()
            sample_on_ray(path, req, Path(tmp) / "out", num_actors=cores, shard_size=max(batch, n // (2 * cores)),
                          cpus_per_actor=0.5, batch_size=batch, progress=False)
            t_pool = time.perf_counter() - t0
    finally:
        if started:
            ray.shutdown()
    return {"sampling_pool_ratio": (n / t_pool) / (n / t_inproc), "sampling_flops_fraction": flops / t_inproc / ceiling,
            "sampling_inprocess_vectors_per_s": n / t_inproc, "sampling_pool_vectors_per_s": n / t_pool,
            "sampling_achieved_gflops": flops / t_inproc / 1e9, "sampling_ceiling_gflops": ceiling / 1e9,
            "sampling_dtype": str(dtype).replace("torch.", ""), "sampling_n": n,
            "sampling_steps": bundle.cfg.num_inference_steps}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    res = run(quick=ap.parse_args().quick)
    print("| key | value |\n|---|---|")
    for k, v in res.items():
        print(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |")
