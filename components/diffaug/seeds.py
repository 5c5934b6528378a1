"""Subject-object seeds for DiffAugment sampling: mean of a subject and an object box feature, noised img2img-style.

The paper starts sampling not from pure noise but from the mean of a random subject box feature and a
random object box feature of the triplet's classes, noised to the start timestep like the forward
process. Strength s in [0, 1] starts at step int(N*s) counted from the end of the N inference steps
(s = 1: the full chain from (almost) pure noise; s = 0: no denoising, the seed itself). The random choice
is a pure function of (seed, sample id), so a retried shard picks the same boxes.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from diffusers import DDIMScheduler

from components.errors import InputError


def sample_rng(seed: int, sample_id: int, stream: int) -> np.random.Generator:
    """A generator that depends only on (global seed, sample id, stream): batch composition is irrelevant."""
    if sample_id < 0:
        raise InputError("sample_ids", f"contains negative id {sample_id}", "non-negative integers")
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(stream), int(sample_id)])


def subject_object_seed(subj_feats: Mapping[int, np.ndarray], obj_feats: Mapping[int, np.ndarray],
                        subjects: np.ndarray, objects: np.ndarray, sample_ids: np.ndarray,
                        seed: int = 0) -> np.ndarray:
    """(N, D) seeds: mean of one random subject-class feature and one random object-class feature per sample.

    `subj_feats[c]` / `obj_feats[c]` are (n_c, D) pools of box features of class c (pass the same mapping
    twice to draw both from all boxes of a class); the picks depend only on (seed, sample id).
    """
    subjects, objects, ids = (np.asarray(a).reshape(-1) for a in (subjects, objects, sample_ids))
    if not (len(subjects) == len(objects) == len(ids)):
        raise InputError("subject_object_seed", f"lengths {len(subjects)}/{len(objects)}/{len(ids)}",
                         "equal numbers of subjects, objects and sample ids")
    out = None
    for i, (s, o, sid) in enumerate(zip(subjects, objects, ids)):
        picks = []
        for role, pools, c in (("subject", subj_feats, int(s)), ("object", obj_feats, int(o))):
            pool = pools.get(c)
            if pool is None or len(pool) == 0:
                raise InputError(f"{role} feature pool", f"has no box features of class {c}",
                                 "at least one feature per class used by the requests")
            picks.append(np.asarray(pool[sample_rng(seed, int(sid), 0 if role == "subject" else 1)
                                         .integers(len(pool))], np.float32))
        if out is None:
            out = np.empty((len(ids), picks[0].shape[-1]), np.float32)
        out[i] = 0.5 * (picks[0] + picks[1])
    return out if out is not None else np.zeros((0, 0), np.float32)


def start_timesteps(scheduler: DDIMScheduler, strength: float) -> torch.Tensor:
    """The inference timesteps left after skipping to strength s (diffusers img2img convention)."""
    if not 0.0 <= strength <= 1.0:
        raise InputError("strength", f"is {strength}", "a value in [0, 1]")
    n = len(scheduler.timesteps)
    init = min(int(n * strength), n)
    return scheduler.timesteps[n - init:]


def noised_seed(scheduler: DDIMScheduler, seed_x0: torch.Tensor, noise: torch.Tensor,
                strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_start, timesteps): the (standardised) seed noised to the first remaining timestep by add_noise."""
    steps = start_timesteps(scheduler, strength)
    if len(steps) == 0:
        return seed_x0.clone(), steps
    t0 = steps[:1].expand(len(seed_x0))
    return scheduler.add_noise(seed_x0, noise, t0), steps
