"""Subject-object seeds: mean of one chosen subject and object feature, deterministic per id; img2img strength."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from components.diffaug.diffusion import DiffusionConfig, make_scheduler
from components.diffaug.seeds import noised_seed, start_timesteps, subject_object_seed
from components.errors import InputError


def _pools():
    rng = np.random.default_rng(0)
    return {c: rng.normal(size=(5 + c, 6)).astype(np.float32) for c in range(3)}


def test_seed_is_mean_of_one_subject_and_one_object_feature_and_deterministic_per_id():
    subj, obj = _pools(), {c: v + 100.0 for c, v in _pools().items()}
    s, o, ids = np.array([0, 1, 2, 0]), np.array([2, 2, 1, 0]), np.array([10, 11, 12, 13])
    seeds = subject_object_seed(subj, obj, s, o, ids, seed=3)
    for row, si, oi in zip(seeds, s, o):
        pair_means = 0.5 * (subj[si][:, None, :] + obj[oi][None, :, :])
        assert np.isclose(pair_means, row, atol=1e-6).all(-1).any()
    # the pick depends on the id, not on the position in the request or its neighbours
    rev = subject_object_seed(subj, obj, s[::-1], o[::-1], ids[::-1], seed=3)
    assert np.array_equal(rev[::-1], seeds)
    assert np.array_equal(subject_object_seed(subj, obj, s[:1], o[:1], ids[:1], seed=3), seeds[:1])
    # different ids draw different boxes somewhere
    many = subject_object_seed(subj, obj, np.zeros(20, int), np.zeros(20, int), np.arange(20), seed=3)
    assert len(np.unique(many.round(5), axis=0)) > 1
    with pytest.raises(InputError, match="class 7"):
        subject_object_seed(subj, obj, np.array([7]), np.array([0]), np.array([0]))


def _ddim(n: int = 10) -> DDIMScheduler:
    sched = DDIMScheduler.from_config(make_scheduler(DiffusionConfig()).config, timestep_spacing="trailing",
                                      clip_sample=False)
    sched.set_timesteps(n)
    return sched


def test_strength_zero_keeps_the_seed_and_strength_one_starts_from_noise():
    sched = _ddim(10)
    x0, noise = torch.randn(64, 8) + 5.0, torch.randn(64, 8)
    x, steps = noised_seed(sched, x0, noise, 0.0)
    assert len(steps) == 0 and torch.equal(x, x0)
    x, steps = noised_seed(sched, x0, noise, 1.0)
    assert len(steps) == 10 and int(steps[0]) == 999
    assert torch.allclose(x, noise, atol=0.02)  # alpha_bar(999) ~ 0: the seed is gone
    x, steps = noised_seed(sched, x0, noise, 0.5)
    assert len(steps) == 5 and torch.equal(steps, sched.timesteps[5:])
    ab = sched.alphas_cumprod[int(steps[0])]
    assert torch.allclose(x, ab.sqrt() * x0 + (1 - ab).sqrt() * noise, atol=1e-5)  # forward process q(x_t|x_0)
    assert len(start_timesteps(sched, 0.05)) == 0  # int(10 * 0.05) = 0 steps
    with pytest.raises(InputError, match="strength"):
        start_timesteps(sched, 1.5)
