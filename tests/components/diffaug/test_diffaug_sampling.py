"""Sampling: each sample depends only on (seed, sample id), not on batch composition; input checks."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from components.diffaug.diffusion import DiffusionBundle, DiffusionConfig, build_denoiser
from components.diffaug.sampling import inference_bundle, inference_model, sample_features
from components.errors import InputError

N, D, E, T, K = 10, 12, 6, 3, 4


@pytest.fixture(scope="module")
def bundle():
    torch.manual_seed(0)
    cfg = DiffusionConfig(hidden=16, layers=1, heads=2, tokens=3, num_inference_steps=4, dtype="float32", seed=7)
    model = build_denoiser(cfg, D, E, K)
    with torch.no_grad():  # leave the zero-initialised adaLN gates: make the net non-trivial
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return DiffusionBundle(model.eval(), np.full(D, 2.0, np.float32), np.full(D, 3.0, np.float32), cfg)


def _inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(N, T, E)).astype(np.float32), np.ones((N, T), bool), rng.random((N, K)).astype(np.float32),
            np.arange(100, 100 + N), rng.normal(size=(N, D)).astype(np.float32))


def test_same_vectors_regardless_of_batch_composition(bundle):
    text, mask, hard, ids, seeds = _inputs()
    a = sample_features(bundle, text, mask, hard, ids, batch_size=3)
    perm = np.random.default_rng(1).permutation(N)
    b = sample_features(bundle, text[perm], mask[perm], hard[perm], ids[perm], batch_size=4)
    assert np.allclose(b, a[perm], atol=1e-5)
    # a retried half shard reproduces its rows
    assert np.allclose(sample_features(bundle, text[5:], mask[5:], hard[5:], ids[5:]), a[5:], atol=1e-5)
    # another global seed gives other vectors
    assert not np.allclose(sample_features(bundle, text, mask, hard, ids, seed=8), a, atol=1e-2)
    # with seed features too
    c = sample_features(bundle, text, mask, hard, ids, seeds, strength=0.5, batch_size=3)
    d = sample_features(bundle, text[perm], mask[perm], hard[perm], ids[perm], seeds[perm], strength=0.5, batch_size=7)
    assert np.allclose(d, c[perm], atol=1e-5)


def test_strength_zero_returns_the_seed_features(bundle):
    text, mask, hard, ids, seeds = _inputs()
    out = sample_features(bundle, text, mask, hard, ids, seeds, strength=0.0)
    assert np.allclose(out, seeds, atol=1e-5)


def test_input_errors(bundle):
    text, mask, hard, ids, seeds = _inputs()
    with pytest.raises(InputError, match="duplicates"):
        sample_features(bundle, text, mask, hard, np.zeros(N, int))
    with pytest.raises(InputError, match="hardness"):
        sample_features(bundle, text, mask, None, ids)
    with pytest.raises(InputError, match="strength"):
        sample_features(bundle, text, mask, hard, ids, strength=0.5)
    with pytest.raises(InputError, match="seed_features"):
        sample_features(bundle, text, mask, hard, ids, seeds[:, :3])
    with pytest.raises(InputError, match="text"):
        sample_features(bundle, text[:3], mask, hard, ids)


def test_bf16_sampling_uses_a_cast_copy_and_stays_close_to_fp32(bundle):
    half = dataclasses.replace(bundle, cfg=dataclasses.replace(bundle.cfg, dtype="bfloat16"))
    model = inference_model(half)
    assert model is not bundle.model and model.inp.weight.dtype == torch.bfloat16
    assert bundle.model.inp.weight.dtype == torch.float32  # the bundle's own model is untouched
    assert inference_model(bundle) is bundle.model  # fp32: no copy
    text, mask, hard, ids, _ = _inputs()
    ref = sample_features(bundle, text, mask, hard, ids)
    got = sample_features(half, text, mask, hard, ids)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert 0 < err < 0.05, err  # bf16 rounding, not a different computation
    cast = inference_bundle(half)  # what a sampling actor holds: cast once, then no copy per call
    assert cast.model.inp.weight.dtype == torch.bfloat16 and inference_model(cast) is cast.model
    np.testing.assert_array_equal(sample_features(cast, text, mask, hard, ids), got)


def test_inference_bundle_casts_and_moves_once_and_only_when_needed(bundle):
    """`inference_bundle(bundle, dtype, device)`: the model itself when already in that dtype on that device,
    else one cast copy there (the bundle's own model untouched); an unknown dtype is refused."""
    same = inference_bundle(bundle, "float32", "cpu")
    assert same.model is bundle.model and same.cfg.dtype == "float32"
    half = inference_bundle(bundle, "bfloat16", torch.device("cpu"))
    assert half.model is not bundle.model and half.model.inp.weight.dtype == torch.bfloat16
    assert half.model.inp.weight.device.type == "cpu" and bundle.model.inp.weight.dtype == torch.float32
    assert inference_model(half) is half.model  # sample_features then uses it as it is
    with pytest.raises(InputError, match="dtype: 'float16'"):
        inference_bundle(bundle, "float16")
