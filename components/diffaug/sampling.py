"""Sampling relation features from a trained diffusion bundle with DDIM (DiffAugment step 3).

Every sample's starting noise comes from a generator seeded by (global seed, sample id), and DDIM with
eta = 0 adds no further noise, so a sample's vector does not depend on which batch or shard it was
drawn in: a retried shard reproduces the same vectors (up to float rounding of batched matmuls).
Classifier-free guidance: out = uncond + g * (cond - uncond) on the model output (x0, epsilon or v).
"""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch
from diffusers import DDIMScheduler
from tqdm.auto import tqdm

from components.diffaug.denoiser import Denoiser
from components.diffaug.diffusion import DiffusionBundle, autocast_dtype, make_scheduler
from components.diffaug.seeds import noised_seed, sample_rng
from components.errors import InputError

NOISE_STREAM = 2  # generator stream of the starting noise (0/1 are the seed box picks)


def inference_scheduler(bundle: DiffusionBundle, num_inference_steps: int | None = None) -> DDIMScheduler:
    """DDIM over the bundle's training schedule, trailing spacing (first step at the last train timestep)."""
    sched = DDIMScheduler.from_config(make_scheduler(bundle.cfg).config, timestep_spacing="trailing",
                                      clip_sample=False, set_alpha_to_one=True)
    sched.set_timesteps(num_inference_steps or bundle.cfg.num_inference_steps)
    return sched


def per_sample_noise(sample_ids: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """(N, dim) standard normal noise, row i a pure function of (seed, sample_ids[i])."""
    return np.stack([sample_rng(seed, int(s), NOISE_STREAM).standard_normal(dim, dtype=np.float32)
                     for s in sample_ids]) if len(sample_ids) else np.zeros((0, dim), np.float32)


def inference_model(bundle: DiffusionBundle, device: str | torch.device | None = None) -> Denoiser:
    """The bundle's denoiser in eval mode, on `device` (default: where it is) and in its compute dtype there:
    the model itself when it already is (fp32 on its device, or a bundle from `inference_bundle`), else a
    copy cast and moved once (autocast would cast every weight again at every call)."""
    model = bundle.model.eval()
    w = model.inp.weight
    dev = w.device if device is None else torch.device(device)
    dtype = autocast_dtype(bundle.cfg, dev.type)
    return model if (w.dtype, w.device) == (dtype, dev) else copy.deepcopy(model).to(device=dev, dtype=dtype)


COMPUTE_DTYPES = ("float32", "bfloat16")


def check_compute_dtype(dtype: str, what: str = "dtype") -> str:
    """`dtype` if it is a concrete compute dtype ('float32' / 'bfloat16'), else InputError naming `what`."""
    if dtype not in COMPUTE_DTYPES:
        raise InputError(what, f"{dtype!r}", f"one of {COMPUTE_DTYPES}")
    return dtype


def compute_dtype(bundle: DiffusionBundle, device_type: str = "cpu") -> str:
    """The concrete compute dtype the bundle's config asks for on a device of `device_type` ('auto' on a CPU
    resolved by THIS machine's CPU)."""
    return "bfloat16" if autocast_dtype(bundle.cfg, device_type) == torch.bfloat16 else "float32"


def inference_bundle(bundle: DiffusionBundle, dtype: str | None = None,
                     device: str | torch.device | None = None) -> DiffusionBundle:
    """The bundle with its denoiser cast to the compute dtype and moved to `device` once, for a sampler that
    calls `sample_features` many times (a sampling actor, shard after shard). `dtype` ('float32' / 'bfloat16')
    overrides the config's, so that every actor of a pool computes as the driver decided, whatever its CPU."""
    if dtype is not None:
        bundle = dataclasses.replace(bundle, cfg=dataclasses.replace(bundle.cfg, dtype=check_compute_dtype(dtype)))
    return dataclasses.replace(bundle, model=inference_model(bundle, device))


@torch.inference_mode()
def _denoise(model: Denoiser, sched: DDIMScheduler, x: torch.Tensor, steps: torch.Tensor,
             text: torch.Tensor, mask: torch.Tensor | None, hard: torch.Tensor | None, g: float) -> torch.Tensor:
    """DDIM chain from x (fp32) over `steps`; the condition (and its guidance copy) is encoded once, not per
    step, with its cross-attention keys/values (`Denoiser.cache_context`). The model computes in its own
    dtype; guidance and the scheduler's update stay in fp32."""
    dtype, dev = model.inp.weight.dtype, model.inp.weight.device
    x, text, mask, hard = (None if a is None else a.to(dev) for a in (x, text, mask, hard))
    b = len(x)
    guided = g != 1.0
    if guided:
        text, mask, hard = (None if a is None else torch.cat([a, a]) for a in (text, mask, hard))
        drop = torch.cat([torch.zeros(b, dtype=torch.bool, device=dev), torch.ones(b, dtype=torch.bool, device=dev)])
    else:
        drop = None
    hard = None if hard is None else hard.to(dtype)
    cond = model.cache_context(model.encode_condition(text.to(dtype), mask, hard, drop))
    xin = torch.empty((2 * b if guided else b, x.shape[1]), dtype=dtype, device=dev)
    for t in steps:
        xin[:b] = x
        if guided:
            xin[b:] = x
        out = model.denoise(xin, t.expand(len(xin)), cond).float()
        if guided:
            out = out[b:] + g * (out[:b] - out[b:])
        x = sched.step(out, t, x, eta=0.0).prev_sample
    return x


def sample_features(bundle: DiffusionBundle, text: np.ndarray, text_mask: np.ndarray | None,
                    hardness: np.ndarray | None, sample_ids: np.ndarray, seed_features: np.ndarray | None = None,
                    strength: float = 1.0, batch_size: int = 512, guidance_scale: float | None = None,
                    num_inference_steps: int | None = None, seed: int | None = None,
                    progress: bool = False) -> np.ndarray:
    """(N, D) de-standardised features for text (N, T, E)+mask or (N, E), hardness (N, K) or None.

    `seed_features` (N, D) in feature space (e.g. `subject_object_seed`) start the chain at `strength`;
    without them sampling starts from pure noise (strength must then be 1). `guidance_scale` (default
    the bundle's) 1 = conditional only, 0 = unconditional. `seed` defaults to the bundle's cfg.seed.
    Computes on the device of the bundle's model (`inference_bundle(..., device=)` moves it); noise is drawn
    on the CPU per sample id, so the samples do not depend on the device beyond its float rounding.
    """
    ids = np.asarray(sample_ids).reshape(-1)
    model = inference_model(bundle)
    n, d = len(ids), model.feature_dim
    text = np.asarray(text, np.float32)
    if text.ndim not in (2, 3) or len(text) != n:
        raise InputError("text", f"shape {text.shape}", f"({n}, E) or ({n}, T, E) (one row per sample id)")
    if text_mask is not None and (text.ndim != 3 or np.shape(text_mask) != text.shape[:2]):
        raise InputError("text_mask", f"shape {np.shape(text_mask)}", f"{text.shape[:2]} for token text")
    if model.hardness_dim and (hardness is None or np.shape(hardness) != (n, model.hardness_dim)):
        raise InputError("hardness", f"shape {None if hardness is None else np.shape(hardness)}",
                         f"({n}, {model.hardness_dim}): this bundle conditions on hardness")
    if len(np.unique(ids)) != n:
        raise InputError("sample_ids", "contains duplicates", "unique ids (each id fixes one sample's noise)")
    if seed_features is None and strength != 1.0:
        raise InputError("strength", f"is {strength} without seed_features", "1.0 or seed features to start from")
    if seed_features is not None and np.shape(seed_features) != (n, d):
        raise InputError("seed_features", f"shape {np.shape(seed_features)}", f"({n}, {d})")
    g = bundle.cfg.guidance_scale if guidance_scale is None else float(guidance_scale)
    seed = bundle.cfg.seed if seed is None else seed
    sched = inference_scheduler(bundle, num_inference_steps)
    mean, std = torch.from_numpy(bundle.mean), torch.from_numpy(bundle.std)
    out = np.empty((n, d), np.float32)
    for lo in tqdm(range(0, n, batch_size), desc="diffusion sample", disable=not progress, mininterval=2.0):
        sl = slice(lo, lo + batch_size)
        noise = torch.from_numpy(per_sample_noise(ids[sl], d, seed))
        if seed_features is None:
            x, steps = noise * sched.init_noise_sigma, sched.timesteps
        else:
            x0 = (torch.from_numpy(np.asarray(seed_features[sl], np.float32)) - mean) / std
            x, steps = noised_seed(sched, x0, noise, strength)
        mask = None if text_mask is None else torch.from_numpy(np.asarray(text_mask[sl], bool))
        hard = None if not model.hardness_dim else torch.from_numpy(np.asarray(hardness[sl], np.float32))
        x = _denoise(model, sched, x, steps, torch.from_numpy(text[sl]), mask, hard, g).cpu()
        out[sl] = (x * std + mean).numpy()
    return out
