"""Smoke tests of the benchmarks: each `run(quick=True)` finishes and returns finite positive numbers
(ratios and rates; a load average may be 0); no timing is asserted (speed claims live in benchmarks/results.json, measured side by side)."""
import math

import pytest

from benchmarks import bench_hml_step, bench_sampling, bench_stream


def _check(res: dict, required: tuple[str, ...]) -> None:
    missing = [k for k in required if k not in res]
    assert not missing, f"missing keys {missing}"
    bad = {k: v for k, v in res.items() if not (isinstance(v, float) and math.isfinite(v) and v >= 0)}
    assert not bad, f"not finite non-negative floats: {bad}"
    assert all(res[k] > 0 for k in required), {k: res[k] for k in required}


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
    """The FLOP fraction's numerator: the analytic per-module count equals torch's FlopCounterMode on the
    sampling shapes (the denoiser's attention is plain matmuls, so nothing is an opaque fused op)."""
    bundle, req, batch = bench_sampling._setup(quick)
    flops = bench_sampling.flops_per_sample(bundle, req, batch)
    assert flops["analytic"] > 1e6
    assert flops["analytic"] == flops["flop_counter_mode"]


@pytest.mark.ray
def test_stream_benchmark_returns_finite_positive_ratios(ray_local):
    res = bench_stream.run(quick=True)
    _check(res, ("stream_ratio", "stream_data_ratio", "stream_steady_ratio", "stream_plain_train_images_per_s",
                 "stream_ray_train_images_per_s"))
    assert res["stream_ratio"] == pytest.approx(res["stream_ray_train_images_per_s"]
                                                / res["stream_plain_train_images_per_s"])
    assert ray_local.is_initialized()  # the benchmark leaves a Ray it did not start running
