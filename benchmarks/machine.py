"""Facts about the machine a benchmark ran on, measured in the same run (cores, matmul ceilings)."""
from __future__ import annotations

import os
import platform
import time

import ray
import torch


def best_matmul_seconds(a: torch.Tensor, b: torch.Tensor, repeats: int) -> float:
    """Fastest of `repeats` timed a @ b after one warm-up (the best run is the least disturbed by load)."""
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_ceiling(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5) -> float:
    """Best achieved FLOP/s of an n x n matmul in `dtype` on this CPU, all threads (the machine's ceiling)."""
    return 2.0 * n**3 / best_matmul_seconds(torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype), repeats)


def facts() -> dict:
    """Cores, threads, CPU flags of interest and the fp32 (and, with native bf16, bf16) matmul ceilings.

    Without avx512_bf16/amx_bf16 torch emulates bf16 matmul (tens of times slower than fp32, minutes
    per measurement) and nothing here computes in bf16 on such a CPU, so that ceiling is not measured."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((ln for ln in fh if ln.startswith("flags")), "")
    except OSError:
        pass
    native_bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
    return {
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "avx2": "avx2" in flags.split(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "matmul_fp32_gflops": matmul_ceiling(torch.float32) / 1e9,
        "matmul_bf16_gflops": matmul_ceiling(torch.bfloat16) / 1e9 if native_bf16 else None,
    }


def start_local_ray(cores: int) -> bool:
    """Start a local Ray of `cores` CPUs (quiet: no dashboard, no worker logs) unless one is already up; True
    when this call started it, so the caller shuts it down."""
    if ray.is_initialized():
        return False
    ray.init(address="local", num_cpus=cores, include_dashboard=False, log_to_driver=False, configure_logging=False)
    return True
