"""Diffusion sampling benchmark: Ray actor pool vs one in-process loop, and achieved FLOP/s vs the matmul ceiling.

`sampling_pool_ratio` = vectors/s of the pool side / vectors/s of `sample_features` in this process with
torch threads = cores (same total threads; goal >= 0.9). The pool samples in DiffAugment's batches
(`DiffAugConfig.sample_batch_size`, 256 rows per actor); the in-process loop is timed at that batch and at twice
it (its threads split a batch, so 2x keeps each core's share) and the faster is the baseline, so the pool is
never compared with a loop held at a batch size it does worse at. The pool side is what DiffAugment's `_sample`
(pipelines/diffaug.py) does on its second and later sampling runs: hash the requests once
(`components.stages.arrays_hash`), `pipelines.diffusion.sample_on_ray` with that `requests_hash` on a started
`SamplerPool` (one 1-CPU, 1-thread actor per core, warmed up on one batch as the in-process loop is,
parquet shards written), `load_features` (the shards read back in sample-id order): both sides end with the same
in-memory (N, D) array, and the benchmark checks they agree (sampling is deterministic per sample id;
`sampling_pool_max_abs_diff`). `sampling_pool_cold_ratio` is the same with a pool started for the call
(actor start-up and imports included, as a first sampling run pays).
`sampling_pool_compute_ratio` leaves out everything but the actors' own per-shard sampling seconds (from
the manifest), summed and divided by the number of actors. All are measured alternately `repeats` times;
medians are reported.

`sampling_flops_fraction` = the denoiser's matmul FLOPs per second of the in-process loop / this machine's
matmul ceiling in the same dtype, measured in the same run (goal >= 0.7). The ceiling is the best FLOP/s of
either an n x n matmul or the denoiser's own largest GEMM shape (all threads): under load the long square
matmul can measure below the short GEMM, and a ceiling some matmul beats would flatter the fraction. The
FLOPs are counted analytically from the modules that run (every nn.Linear: 2 * rows * in * out; every
nn.MultiheadAttention, the denoiser's Attention subclass included: its q/k/v/out projections and
4 * B * Tq * Tk * E for scores and mixing), with the condition and its cross-attention keys/values computed
once per batch and the denoiser once per step (x2 rows under guidance), exactly what `sample_features`
executes. torch.utils.flop_counter's FlopCounterMode counts the same chain (encoder and denoiser) as a check,
reported next to it: the denoiser's attention is plain matmuls, so the two counts agree exactly (tested).
Why the fraction is what it is: `sampling_matmul_time_share` (profiler: share of self CPU time in matmul ops
during one guided denoiser step) and `sampling_gemm_fraction` (the denoiser's largest GEMM shape alone, as
a fraction of the square matmul); the fraction cannot exceed roughly their product. Where the compute dtype is
bf16 (a CPU with avx512_bf16/AMX), the fp32 loop is measured too, against the fp32 ceiling taken the same
way, the best of the square matmul and the GEMM shape (`sampling_flops_fraction_fp32`,
`sampling_fp32_vectors_per_s`, `sampling_fp32_ceiling_gflops`). The model is untrained (speed does not
depend on the weights).
"""
from __future__ import annotations

import copy
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Self

import numpy as np
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.machine import best_matmul_seconds, matmul_ceiling, start_local_ray
from components.diffaug.denoiser import Condition, Denoiser
from components.diffaug.diffusion import (
    DiffusionBundle,
    DiffusionConfig,
    autocast_dtype,
    build_denoiser,
    cpu_has_bf16,
    save_bundle,
)
from components.diffaug.sampling import inference_bundle, inference_model, sample_features
from components.stages import arrays_hash

FEATURE_DIM, COND_DIM, TEXT_TOKENS, HARDNESS_DIM = 128, 384, 3, 32
AGREE_TOL_FP32, AGREE_TOL_BF16 = 1e-4, 5e-2  # relative to the largest |feature|: float rounding only
MATMUL_OPS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product_flash_attention_for_cpu")


def _setup(quick: bool) -> tuple[DiffusionBundle, dict, int]:
    """Quick: a wider denoiser (hidden 256, 8 heads) for 4 DDIM steps over 512 samples. Full: DiffAugment's
    own default sampling (the DiffusionConfig defaults: hidden 128, 8 tokens, 20 DDIM steps, guidance 3)
    over 4,096 samples in DiffAugment's batches (`DiffAugConfig.sample_batch_size`), i.e. what `make run`
    samples, at about its size. Sample ids are 0..n-1 in order, so request order is sample-id order."""
    from pipelines.diffaug import DiffAugConfig

    cfg = (DiffusionConfig(hidden=256, layers=4, heads=8, tokens=8, num_inference_steps=4, guidance_scale=2.0,
                           dtype="auto") if quick else DiffusionConfig(dtype="auto"))
    torch.manual_seed(0)
    model = build_denoiser(cfg, FEATURE_DIM, COND_DIM, HARDNESS_DIM).eval()
    bundle = DiffusionBundle(model, np.zeros(FEATURE_DIM, np.float32), np.ones(FEATURE_DIM, np.float32), cfg)
    n = 512 if quick else 4096
    rng = np.random.default_rng(0)
    req = {"sample_id": np.arange(n), "subject": rng.integers(0, 150, n), "object": rng.integers(0, 150, n),
           "predicate": rng.integers(0, 50, n), "text": rng.normal(size=(n, TEXT_TOKENS, COND_DIM)).astype(np.float32),
           "text_mask": np.ones((n, TEXT_TOKENS), bool), "hardness": rng.random((n, HARDNESS_DIM)).astype(np.float32)}
    return bundle, req, DiffAugConfig().sample_batch_size


class AnalyticFlops:
    """Counts matmul FLOPs of the nn.Linear and nn.MultiheadAttention modules a model runs (forward hooks; the
    denoiser's Attention: q/out projections, scores and mixing per call, its key/value projections where they
    run, in `project_kv`, which sampling calls once per batch for the condition and per step for the timestep)."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.flops, self._hooks, self._wrapped = model, 0, [], []

    def _linear(self, m: nn.Linear, args: tuple, _out: torch.Tensor) -> None:
        self.flops += 2 * (args[0].numel() // m.in_features) * m.in_features * m.out_features

    def _mha(self, m: nn.MultiheadAttention, args: tuple, kwargs: dict, _out: object) -> None:
        q = args[0]  # batch_first (B, T, E)
        context = args[1] if len(args) > 1 else kwargs.get("context")
        kv = kwargs.get("kv")
        e, tq, b = m.embed_dim, q.shape[1], q.shape[0]
        if context is None and kv is None:  # self-attention: q/k/v and out projections of the queries
            self.flops += 2 * e * e * b * 4 * tq + 4 * b * tq * tq * e
            return
        tk = kv[0].shape[2] if kv is not None else context.shape[1]  # keys/values: counted in project_kv
        self.flops += 2 * e * e * b * 2 * tq + 4 * b * tq * tk * e

    def _counting_project_kv(self, m: nn.MultiheadAttention):
        project = type(m).project_kv.__get__(m)

        def counted(context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            self.flops += 2 * (context.numel() // m.embed_dim) * m.embed_dim * 2 * m.embed_dim
            return project(context)
        return counted

    def __enter__(self) -> Self:
        for mod in self.model.modules():
            if isinstance(mod, nn.MultiheadAttention):
                self._hooks.append(mod.register_forward_hook(self._mha, with_kwargs=True))
                if hasattr(mod, "project_kv"):
                    mod.project_kv = self._counting_project_kv(mod)
                    self._wrapped.append(mod)
            elif isinstance(mod, nn.Linear) and not isinstance(mod, nn.modules.linear.NonDynamicallyQuantizableLinear):
                self._hooks.append(mod.register_forward_hook(self._linear))  # MHA's out_proj runs functionally
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._hooks:
            h.remove()
        for mod in self._wrapped:
            del mod.project_kv


def _inputs(req: dict, rows: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Guided-batch inputs of the denoiser in `dtype` (`rows` = 2 x batch: conditional and unconditional halves)."""
    take = lambda k: torch.from_numpy(req[k][: rows // 2]).repeat(2, *([1] * (req[k].ndim - 1)))
    drop = torch.cat([torch.zeros(rows // 2, dtype=torch.bool), torch.ones(rows // 2, dtype=torch.bool)])
    return (torch.randn(rows, FEATURE_DIM, dtype=dtype), torch.full((rows,), 500), take("text").to(dtype),
            take("text_mask"), take("hardness").to(dtype), drop)


def flops_per_sample(bundle: DiffusionBundle, req: dict, batch: int) -> dict[str, float]:
    """Matmul FLOPs of one full sampling chain (condition encoder and its keys/values once, denoiser once per
    step) per sample, counted on the same calls two ways: analytic (used) and FlopCounterMode (a check)."""
    m, steps = inference_model(bundle), bundle.cfg.num_inference_steps
    guided = 2 if bundle.cfg.guidance_scale != 1.0 else 1
    x, t, text, mask, hard, drop = _inputs(req, guided * batch, autocast_dtype(bundle.cfg))
    with torch.inference_mode():
        with AnalyticFlops(m) as enc, FlopCounterMode(display=False) as fc_enc:
            cond = m.cache_context(m.encode_condition(text, mask, hard, drop))
        with AnalyticFlops(m) as den, FlopCounterMode(display=False) as fc_den:
            m.denoise(x, t, cond)
    return {"analytic": (enc.flops + steps * den.flops) / batch,
            "flop_counter_mode": (fc_enc.get_total_flops() + steps * fc_den.get_total_flops()) / batch}


def matmul_time_share(bundle: DiffusionBundle, req: dict, batch: int) -> float:
    """Share of self CPU time in matmul ops during one guided denoiser step (profiler, after a warm-up)."""
    m = inference_model(bundle)
    x, t, text, mask, hard, drop = _inputs(req, 2 * batch, autocast_dtype(bundle.cfg))
    with torch.inference_mode():
        cond = m.cache_context(m.encode_condition(text, mask, hard, drop))
        m.denoise(x, t, cond)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            m.denoise(x, t, cond)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    return sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS) / max(total, 1e-9)


def _ceiling(dtype: torch.dtype, threads: int) -> float:
    """The matmul ceiling (FLOP/s) with `threads` torch threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return matmul_ceiling(dtype, repeats=3)
    finally:
        torch.set_num_threads(old)


def gemm_fraction(rows: int, hidden: int, dtype: torch.dtype, ceiling: float, threads: int, repeats: int = 3) -> float:
    """Best FLOP/s of the denoiser's largest GEMM, (rows, hidden) @ (hidden, 4 hidden), as a fraction of the ceiling."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(rows, hidden).to(dtype), torch.randn(hidden, 4 * hidden).to(dtype)
        best = best_matmul_seconds(a, b, repeats)
    finally:
        torch.set_num_threads(old)
    return 2.0 * rows * hidden * 4 * hidden / best / ceiling


def _inprocess(bundle: DiffusionBundle, req: dict, batch: int, threads: int) -> tuple[float, np.ndarray]:
    """(wall seconds, (N, D) features) of `sample_features` over all requests in this process, `threads` threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        feats = sample_features(bundle, req["text"], req["text_mask"], req["hardness"], req["sample_id"],
                                batch_size=batch)
        return time.perf_counter() - t0, feats
    finally:
        torch.set_num_threads(old)


def _pool(path: Path, req: dict, out: Path, cores: int, batch: int, pool=None) -> tuple[float, float, np.ndarray]:
    """(wall seconds, per-actor sampling seconds, (N, D) features in sample-id order) of DiffAugment's
    `_sample` steps: hash once, `sample_on_ray` with one actor per core on `pool` (started and warm) or on a
    pool started for the call (start-up included), `load_features`."""
    from pipelines.diffusion import load_features, sample_on_ray

    n = len(req["sample_id"])
    t0 = time.perf_counter()
    key = arrays_hash(req)
    out = out.with_name(f"{out.name}-{key}")
    manifest = sample_on_ray(path, req, out, num_actors=cores, shard_size=max(batch, n // (2 * cores)),
                             cpus_per_actor=1.0, batch_size=batch, progress=False, pool=pool, requests_hash=key)
    feats = load_features(out, req["sample_id"])
    wall = time.perf_counter() - t0
    return wall, sum(s["seconds"] for s in manifest["shards"]) / cores, feats


def check_agree(pool: np.ndarray, inproc: np.ndarray, dtype: torch.dtype) -> float:
    """Largest |pool - in-process| over all vectors; raises when above the compute dtype's rounding tolerance
    (same sample ids give the same vectors, up to float rounding of batched matmuls)."""
    if pool.shape != inproc.shape:
        raise RuntimeError(f"pool features {pool.shape} vs in-process {inproc.shape}")
    diff = float(np.max(np.abs(pool - inproc))) if pool.size else 0.0
    tol = (AGREE_TOL_BF16 if dtype == torch.bfloat16 else AGREE_TOL_FP32) * max(1.0, float(np.max(np.abs(inproc))))
    if not diff <= tol:
        raise RuntimeError(f"pool and in-process sampling disagree: max abs diff {diff:.3g} > {tol:.3g}")
    return diff


def _best_ceiling(square: list[float], gemm: list[float]) -> list[float]:
    """Per repeat, the best FLOP/s of the square matmul and the GEMM shape (its fraction of the square one)."""
    return [c * max(1.0, g) for c, g in zip(square, gemm)]


def run(quick: bool = False, repeats: int | None = None) -> dict:
    """Measure pool vs in-process sampling throughput (outputs checked equal) and the FLOP/s fraction of the
    matmul ceiling."""
    import ray

    cores = os.cpu_count() or 1
    repeats = repeats or (2 if quick else 5)
    bundle, req, batch = _setup(quick)
    loop = inference_bundle(bundle)  # the in-process loop casts once, as each pool actor does at bundle load
    dtype = autocast_dtype(bundle.cfg)
    n = len(req["sample_id"])
    gemm_rows, hidden = 2 * batch * bundle.model.tokens, bundle.cfg.hidden
    old_threads = torch.get_num_threads()
    torch.set_num_threads(cores)
    try:
        _inprocess(loop, {k: v[:batch] for k, v in req.items()}, batch, cores)  # warm-up
        flops = flops_per_sample(bundle, req, batch)
        share = matmul_time_share(bundle, req, batch)
    finally:
        torch.set_num_threads(old_threads)
    started = start_local_ray(cores)
    from pipelines.diffusion import SamplerPool

    # where the compute dtype is bf16, the same loop in fp32 against the fp32 ceiling, for comparison
    fp32 = (dataclasses.replace(bundle, cfg=dataclasses.replace(bundle.cfg, dtype="float32"))
            if dtype != torch.float32 else None)
    inproc, inproc_2x, pool_wall, pool_cold, pool_compute, ceil_sq, ceil_1, gemm = [], [], [], [], [], [], [], []
    inproc32, ceil32_sq, gemm32 = [], [], []
    pool_feats = []  # every pool run's (N, D) features, checked against the in-process loop's
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = save_bundle(bundle, Path(tmp) / "bundle.safetensors")
            for r in range(repeats):  # cold pools first: a started pool holds every CPU of this Ray instance
                wall, _, feats = _pool(path, req, Path(tmp) / f"cold{r}", cores, batch)
                pool_cold.append(wall)
                pool_feats.append(feats)
            pool = SamplerPool(cores, 1.0).wait_ready()
            warm = {k: v[:batch * cores] for k, v in req.items()}  # one batch per actor, as the in-process warm-up
            _pool(path, warm, Path(tmp) / "warm", cores, batch, pool)
            for r in range(repeats):  # alternate everything so load from other processes hits all alike
                wall, compute, feats = _pool(path, req, Path(tmp) / f"out{r}", cores, batch, pool)
                pool_wall.append(wall)
                pool_compute.append(compute)
                pool_feats.append(feats)
                ceil_sq.append(_ceiling(dtype, cores))
                seconds, reference = _inprocess(loop, req, batch, cores)
                inproc.append(seconds)
                inproc_2x.append(_inprocess(loop, req, 2 * batch, cores)[0])
                ceil_1.append(_ceiling(dtype, 1))
                gemm.append(gemm_fraction(gemm_rows, hidden, dtype, ceil_sq[-1], cores))
                if fp32 is not None:
                    inproc32.append(_inprocess(fp32, req, batch, cores)[0])
                    ceil32_sq.append(_ceiling(torch.float32, cores))
                    gemm32.append(gemm_fraction(gemm_rows, hidden, torch.float32, ceil32_sq[-1], cores))
            pool.close()
    finally:
        if started:
            ray.shutdown()
    agree = max(check_agree(p, reference, dtype) for p in pool_feats)
    ceil = _best_ceiling(ceil_sq, gemm)
    t_same, t_2x = statistics.median(inproc), statistics.median(inproc_2x)
    if t_2x < t_same:  # the baseline at its better batch size
        inproc = inproc_2x
    fractions = [flops["analytic"] * n / t / c for t, c in zip(inproc, ceil)]
    t_in, t_pool, t_cold, t_comp, ceiling, ceiling_1 = (statistics.median(v) for v in (
        inproc, pool_wall, pool_cold, pool_compute, ceil, ceil_1))
    achieved = flops["analytic"] * n / t_in
    ceil32 = _best_ceiling(ceil32_sq, gemm32)
    return {"sampling_pool_ratio": t_in / t_pool, "sampling_pool_cold_ratio": t_in / t_cold,
            "sampling_pool_compute_ratio": t_in / t_comp,
            "sampling_flops_fraction": statistics.median(fractions),
            "sampling_inprocess_vectors_per_s": n / t_in, "sampling_pool_vectors_per_s": n / t_pool,
            "sampling_inprocess_vectors_per_s_same_batch": n / t_same,
            "sampling_inprocess_vectors_per_s_double_batch": n / t_2x,
            "sampling_pool_max_abs_diff": agree,
            "sampling_achieved_gflops": achieved / 1e9, "sampling_ceiling_gflops": ceiling / 1e9,
            "sampling_square_matmul_gflops": statistics.median(ceil_sq) / 1e9,
            "sampling_ceiling_1thread_gflops": ceiling_1 / 1e9,
            "sampling_flops_fraction_per_repeat": [round(f, 3) for f in fractions],
            "sampling_matmul_time_share": share, "sampling_gemm_fraction": statistics.median(gemm),
            "sampling_flops_per_sample_analytic": flops["analytic"],
            "sampling_flops_per_sample_flop_counter_mode": flops["flop_counter_mode"],
            **({"sampling_flops_fraction_fp32": statistics.median(
                flops["analytic"] * n / t / c for t, c in zip(inproc32, ceil32)),
                "sampling_fp32_vectors_per_s": n / statistics.median(inproc32),
                "sampling_fp32_ceiling_gflops": statistics.median(ceil32) / 1e9,
                "sampling_fp32_square_matmul_gflops": statistics.median(ceil32_sq) / 1e9,
                "sampling_fp32_gemm_fraction": statistics.median(gemm32)} if inproc32 else {}),
            "sampling_dtype": str(dtype).replace("torch.", ""), "sampling_n": n, "sampling_batch": batch,
            "sampling_steps": bundle.cfg.num_inference_steps, "sampling_repeats": repeats,
            "sampling_loadavg_1min": os.getloadavg()[0], **paper_scale(quick, 1 if quick else 3)}


PAPER_TEXT_TOKENS, PAPER_TEXT_DIM = 77, 768  # open_clip ViT-L-14's text context length and width


def _paper_setup(quick: bool) -> tuple[Denoiser, int, int]:
    """The `paper` preset's denoiser (pipelines/full.py: its feature dimension, K, hidden size, layers, heads;
    77 CLIP text tokens of 768-d), untrained, with its DDIM step count and a CPU-sized batch. Quick: the same
    shape at a quarter of the width and two layers, for the smoke test."""
    from pipelines.full import PRESETS

    paper = PRESETS["paper"]
    den = paper["diffaug"]["diffusion"]
    hidden, layers = (den["hidden"] // 4, 2) if quick else (den["hidden"], den["layers"])
    torch.manual_seed(0)
    model = Denoiser(paper["vrr"]["feature_dim"], PAPER_TEXT_DIM, paper["diffaug"]["hardness_k"], hidden=hidden,
                     layers=layers, heads=den["heads"]).eval()
    return model, den["num_inference_steps"], 16 if quick else 64


def _step_seconds(model: Denoiser, x: torch.Tensor, t: torch.Tensor, cond: Condition) -> float:
    """Wall seconds of one denoiser step on `cond`."""
    t0 = time.perf_counter()
    model.denoise(x, t, cond)
    return time.perf_counter() - t0


def paper_scale(quick: bool = False, repeats: int = 3) -> dict:
    """At the `paper` preset's sizes (what a GPU run samples 96K features with), one guided denoiser step as
    sampling runs it (condition keys/values cached) against the same step projecting them anew each step
    (`sampling_paper_kv_cache_speedup`, interleaved, medians), and the cached chain's FLOP fraction of the
    matmul ceiling in each compute dtype this CPU has (the condition encoded once per 50-step chain)."""
    cores = os.cpu_count() or 1
    base, steps, batch = _paper_setup(quick)
    dtypes = [torch.float32] + ([torch.bfloat16] if cpu_has_bf16() else [])
    hidden = base.inp.out_features
    out: dict = {"sampling_paper_hidden": hidden, "sampling_paper_batch": batch}
    old = torch.get_num_threads()
    torch.set_num_threads(cores)
    try:
        for dtype in dtypes:
            model = copy.deepcopy(base).to(dtype)
            rows = 2 * batch
            drop = torch.arange(rows) >= batch
            text = torch.randn(rows, PAPER_TEXT_TOKENS, PAPER_TEXT_DIM).to(dtype)
            mask = torch.ones(rows, PAPER_TEXT_TOKENS, dtype=torch.bool)
            hard = torch.rand(rows, model.hardness_dim).to(dtype)
            x, t = torch.randn(rows, model.feature_dim).to(dtype), torch.full((rows,), 500)
            with torch.inference_mode():
                with AnalyticFlops(model) as enc:
                    cond = model.encode_condition(text, mask, hard, drop)
                    cached = model.cache_context(cond)
                with AnalyticFlops(model) as den:
                    model.denoise(x, t, cached)
                t_enc, t_plain, t_cached, square, gemm = [], [], [], [], []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    model.cache_context(model.encode_condition(text, mask, hard, drop))
                    t_enc.append(time.perf_counter() - t0)
                    t_plain.append(_step_seconds(model, x, t, cond))
                    t_cached.append(_step_seconds(model, x, t, cached))
                    square.append(_ceiling(dtype, cores))
                    gemm.append(gemm_fraction(rows * model.tokens, hidden, dtype, square[-1], cores, 2))
            chain = statistics.median(t_enc) + steps * statistics.median(t_cached)
            ceiling = statistics.median(_best_ceiling(square, gemm))
            name = "" if dtype == torch.float32 else "_bf16"
            out[f"sampling_paper_flops_fraction{name}"] = (enc.flops + steps * den.flops) / chain / ceiling
            out[f"sampling_paper_kv_cache_speedup{name}"] = statistics.median(t_plain) / statistics.median(t_cached)
            out[f"sampling_paper_vectors_per_s{name}"] = batch / chain
    finally:
        torch.set_num_threads(old)
    return out


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args()
    res = run(quick=args.quick, repeats=args.repeats)
    print("| key | value |\n|---|---|")
    for k, v in res.items():
        print(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |")
