"""Smoke tests of the benchmarks: each `run(quick=True)` finishes and returns finite positive numbers
(ratios and rates; a load average may be 0); run_all replaces results.json only with a complete run and
records provenance and other processes' CPU use. No timing is asserted (speed claims live in
benchmarks/results.json, measured side by side)."""
import json
import math
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import bench_classifier, bench_eval, bench_hml_step, bench_sampling, bench_stream, run_all
from components.diffaug.diffusion import cpu_has_bf16


def _check(res: dict, required: tuple[str, ...]) -> None:
    missing = [k for k in required if k not in res]
    assert not missing, f"missing keys {missing}"
    bad = {k: v for k, v in res.items() if not (isinstance(v, float) and math.isfinite(v) and v >= 0)}
    assert not bad, f"not finite non-negative floats: {bad}"
    assert all(res[k] > 0 for k in required), {k: res[k] for k in required}


def _positive(res: dict, keys: tuple[str, ...]) -> None:
    """`keys` are present and finite positive numbers (the result's other keys are not checked)."""
    missing = [k for k in keys if k not in res]
    assert not missing, f"missing keys {missing}"
    bad = {k: res[k] for k in keys if not (isinstance(res[k], (int, float)) and not isinstance(res[k], bool)
                                          and math.isfinite(res[k]) and res[k] > 0)}
    assert not bad, f"not finite positive numbers: {bad}"


def test_hml_step_benchmark_returns_finite_positive_ratios():
    res = bench_hml_step.run(quick=True)
    _check(res, ("hml_step_ratio", "hml_step_vs_pipeline_ce_ratio", "hml_plain_ce_step_ms", "hml_stage2_step_ms",
                 "hml_stage2_vs_default_adam_ce_ratio", "hml_default_adam_ce_step_ms", "hml_step_floor_ratio",
                 "hml_cr_teacher_forward_ms"))
    # The ratios are the quotients of the reported medians (same run, same batches).
    assert res["hml_step_ratio"] == pytest.approx(res["hml_stage2_step_ms"] / res["hml_plain_ce_step_ms"])
    assert res["hml_step_floor_ratio"] == pytest.approx(1 + res["hml_cr_teacher_forward_ms"] / res["hml_plain_ce_step_ms"])


@pytest.mark.parametrize("quick", [True, False])
def test_sampling_flop_count_agrees_with_torch_flop_counter(quick):
    """The FLOP fraction's numerator: the analytic per-module count equals torch's FlopCounterMode over the
    whole chain (condition encoder and denoiser steps, each counted by both on the same call; the
    denoiser's attention is plain matmuls, so nothing is an opaque fused op)."""
    bundle, req, batch = bench_sampling._setup(quick)
    flops = bench_sampling.flops_per_sample(bundle, req, batch)
    assert flops["analytic"] > 1e6
    assert flops["analytic"] == flops["flop_counter_mode"]


def test_sampling_agreement_check_refuses_different_vectors():
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    assert bench_sampling.check_agree(x, x.copy(), torch.float32) == 0.0
    with pytest.raises(RuntimeError, match="disagree"):
        bench_sampling.check_agree(x + 0.5, x, torch.bfloat16)
    with pytest.raises(RuntimeError):
        bench_sampling.check_agree(x[:7], x, torch.float32)


def test_eval_benchmark_reports_tracemalloc_and_process_rss():
    res = bench_eval.run(quick=True)
    _positive(res, ("eval_speed_ratio", "eval_images_per_s", "eval_peak_mb_1x", "eval_peak_mb_16x",
                    "eval_memory_growth", "eval_rss_peak_mb_1x", "eval_rss_peak_mb_16x", "eval_rss_growth"))
    assert res["eval_max_abs_diff"] < 1e-9
    assert res["eval_rss_growth"] == pytest.approx(res["eval_rss_peak_mb_16x"] / res["eval_rss_peak_mb_1x"])


@pytest.mark.ray
def test_classifier_benchmark_tasks_return_the_in_process_weights(ray_local):
    res = bench_classifier.run(quick=True)
    _check(res, ("classifier_tasks_speedup", "classifier_tasks_cold_speedup", "classifier_sequential_seconds",
                 "classifier_tasks_seconds"))
    assert res["classifier_tasks_equal"] == 1.0  # two tasks (cold and warm) reproduced both in-process trainings


def test_stream_benchmark_returns_finite_positive_ratios(ray_local):
    res = bench_stream.run(quick=True)
    _check(res, ("stream_ratio", "stream_data_ratio", "stream_steady_ratio", "stream_plain_train_images_per_s",
                 "stream_ray_train_images_per_s"))
    assert res["stream_ratio"] == pytest.approx(res["stream_ray_train_images_per_s"]
                                                / res["stream_plain_train_images_per_s"])
    assert ray_local.is_initialized()  # the benchmark leaves a Ray it did not start running


@pytest.mark.ray
def test_sampling_benchmark_pool_matches_inprocess_and_reports_used_ceilings(ray_local):
    """The run itself raises if the pool's vectors differ from the in-process loop's; each reported ceiling
    is the best of the square matmul and the GEMM shape, the one the fraction divides by."""
    res = bench_sampling.run(quick=True, repeats=1)  # one repeat: the smoke test checks values, not speed
    keys = ("sampling_pool_ratio", "sampling_pool_cold_ratio", "sampling_flops_fraction", "sampling_ceiling_gflops",
            "sampling_square_matmul_gflops", "sampling_gemm_fraction")
    fp32 = ("sampling_flops_fraction_fp32", "sampling_fp32_ceiling_gflops", "sampling_fp32_square_matmul_gflops",
            "sampling_fp32_gemm_fraction", "sampling_fp32_vectors_per_s")
    paper = ("sampling_paper_flops_fraction", "sampling_paper_kv_cache_speedup", "sampling_paper_vectors_per_s")
    bf16 = tuple(f"{k}_bf16" for k in paper) if cpu_has_bf16() else ()
    _positive(res, keys + paper + bf16 + (fp32 if res["sampling_dtype"] == "bfloat16" else ()))
    assert 0 <= res["sampling_pool_max_abs_diff"] < 1
    assert res["sampling_ceiling_gflops"] >= res["sampling_square_matmul_gflops"]
    if res["sampling_dtype"] == "bfloat16":
        assert res["sampling_fp32_ceiling_gflops"] >= res["sampling_fp32_square_matmul_gflops"]
    assert ray_local.is_initialized()


def _fake_benchmark(monkeypatch, fail: bool = False) -> None:
    """A `benchmarks.bench_fake` module returning {"fake_ratio": 1.0} (or raising), and no matmul ceilings."""
    mod = types.ModuleType("benchmarks.bench_fake")

    def run(quick: bool) -> dict:
        if fail:
            raise ValueError("fake failure")
        return {"fake_ratio": 1.0}

    mod.run = run
    monkeypatch.setitem(sys.modules, "benchmarks.bench_fake", mod)
    monkeypatch.setattr(run_all, "facts", lambda: {"cores": 2})


@pytest.mark.parametrize("fail", [False, True])
def test_run_all_partial_run_leaves_results_json_alone(tmp_path, monkeypatch, fail):
    _fake_benchmark(monkeypatch, fail)
    (tmp_path / "results.json").write_text('{"full": true}\n')
    (tmp_path / "results.md").write_text("full\n")
    assert run_all.main(["--quick", "--only", "bench_fake", "--out", str(tmp_path)]) == 1
    assert json.loads((tmp_path / "results.json").read_text()) == {"full": True}
    assert (tmp_path / "results.md").read_text() == "full\n"
    partial = json.loads((tmp_path / "results.partial.json").read_text())
    assert ("fake_ratio" in partial) is not fail
    assert partial["provenance"]["quick"] is True
    cores = partial["bench_fake_other_cpu_cores"]
    assert isinstance(cores, float) and math.isfinite(cores) and cores >= 0
    assert (tmp_path / "results.partial.md").read_text().startswith("Provenance: commit ")


def test_run_all_complete_run_writes_results_with_provenance(tmp_path, monkeypatch, capsys):
    _fake_benchmark(monkeypatch)
    monkeypatch.setattr(run_all, "REQUIRED", ("fake_ratio",))
    assert run_all.main(["--only", "bench_fake", "--out", str(tmp_path)]) == 0
    assert not (tmp_path / "results.partial.json").exists()
    res = json.loads((tmp_path / "results.json").read_text())
    prov = res["provenance"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=run_all.HERE.parent, capture_output=True, text=True,
                          check=True)
    assert prov["commit"] == head.stdout.strip() and len(prov["commit"]) == 40
    assert isinstance(prov["dirty"], bool) and prov["quick"] is False
    assert prov["utc"].endswith("+00:00")
    assert all(isinstance(prov[k], str) and prov[k] for k in ("python", "torch", "ray", "numpy"))
    assert res["fake_ratio"] == 1.0 and res["bench_fake_other_cpu_cores"] >= 0
    md = (tmp_path / "results.md").read_text().splitlines()
    assert md[0].startswith(f"Provenance: commit {prov['commit']}") and prov["torch"] in md[0]
    assert "| fake_ratio | 1 |" in md
    assert "== bench_fake" in capsys.readouterr().out


def test_other_cpu_counts_descendants_as_own():
    """A child's CPU seconds count as this process tree's, not as other processes' (CPU seconds, not time)."""
    burn = "import time\nwhile time.process_time() < 1.5: pass"
    with run_all.OtherCpu() as meter:
        subprocess.run([sys.executable, "-c", burn], check=True)
    assert meter.own_seconds >= 1.5 - run_all.POLL_SECONDS
    assert math.isfinite(meter.cores) and meter.cores >= 0


@pytest.mark.ray
def test_other_cpu_counts_ray_workers_as_own(ray_local):
    """Ray's workers (children of the raylet this process started) are this process tree's too."""

    @ray_local.remote
    def burn() -> None:
        t0 = time.process_time()
        while time.process_time() - t0 < 1.5:
            pass

    with run_all.OtherCpu() as meter:
        ray_local.get(burn.remote())
    assert meter.own_seconds >= 1.5 - run_all.POLL_SECONDS


@pytest.mark.parametrize("module", ["bench_classifier", "bench_hml_step", "bench_stream", "bench_sampling", "bench_eval"])
def test_every_benchmark_module_shows_help_without_running(module):
    """`python benchmarks/<module>.py --help` prints its usage and exits 0 at once (three used to run their benchmark)."""
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, str(root / "benchmarks" / f"{module}.py"), "--help"], capture_output=True,
                       text=True, timeout=60, check=False, env={**os.environ, "PYTHONPATH": str(root)})
    assert r.returncode == 0 and r.stdout.startswith("usage:"), r.stderr[-500:]
