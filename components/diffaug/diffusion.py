"""Training of the feature diffusion model (DiffAugment step 2) and its self-describing bundle on disk.

Features are standardised per dimension with statistics stored in the bundle; the forward process is
diffusers' DDPMScheduler with `clip_sample=False` (standardised features are not in [-1, 1]). The
default prediction type is x0 ("sample"): REFERENCE.md records that epsilon prediction diverged on
planted 128-d features. Classifier-free guidance: during training the text and hardness conditions of a
`cfg_dropout` fraction of samples are hidden, so sampling can mix conditional and unconditional outputs.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from components.atomic import atomic_path
from components.config import config_hash, from_dict, to_dict
from components.diffaug.denoiser import Denoiser
from components.errors import CheckpointError, ConfigError, DataError, InputError
from components.optim import adamw

FORMAT = "hmldiff.diffusion/1"


@dataclass
class DiffusionConfig:
    """Hyper-parameters of the feature diffusion model, its training and its default sampling."""

    num_train_timesteps: int = field(default=1000, metadata={"range": (2, 10000)})
    num_inference_steps: int = field(default=20, metadata={"range": (1, 10000)})  # DDIM; was 50
    beta_schedule: str = field(default="squaredcos_cap_v2",
                               metadata={"choices": ("linear", "scaled_linear", "squaredcos_cap_v2")})
    prediction_type: str = field(default="sample", metadata={"choices": ("sample", "epsilon", "v_prediction")})
    # 2,000 x 256 at peak lr 5e-3 (OneCycle) makes a generator as faithful as real samples on vrr-planted
    # (tail fidelity 26% / 22% / 29%, seeds 0-2, real 25%); 1,000 x 128 at 3e-4, the old default, learnt
    # almost nothing of the condition (3%); lr 1e-2 was seed-dependent (32% / 4%) and 3e-2 diverged (docs/experiments.md)
    lr: float = field(default=5e-3, metadata={"range": (0.0, 1.0)})
    weight_decay: float = field(default=0.0, metadata={"range": (0.0, 1.0)})
    steps: int = field(default=2000, metadata={"range": (1, None)})
    batch_size: int = field(default=256, metadata={"range": (1, None)})
    # minibatch sampling: a sample of group g (its relation, in DiffAugment) is drawn with probability
    # proportional to n_g ** -balance; 0 = uniform over samples, 1 = uniform over groups
    balance: float = field(default=0.0, metadata={"range": (0.0, 1.0)})
    hidden: int = field(default=128, metadata={"range": (1, None)})
    layers: int = field(default=4, metadata={"range": (1, None)})
    heads: int = field(default=4, metadata={"range": (1, None)})
    tokens: int = field(default=8, metadata={"range": (1, None)})
    use_hardness: bool = True
    cfg_dropout: float = field(default=0.1, metadata={"range": (0.0, 1.0)})
    guidance_scale: float = field(default=3.0, metadata={"range": (0.0, 100.0)})  # measured: g=1 32%, g=3 77% faithful
    dtype: str = field(default="auto", metadata={"choices": ("auto", "float32", "bfloat16")})
    seed: int = 0

    def validate(self) -> None:
        """Cross-field checks."""
        if self.num_inference_steps > self.num_train_timesteps:
            raise ConfigError("diffusion.num_inference_steps", f"{self.num_inference_steps} > num_train_timesteps "
                              f"{self.num_train_timesteps}", "at most num_train_timesteps")
        if self.hidden % self.heads:
            raise ConfigError("diffusion.hidden", f"{self.hidden} not divisible by heads={self.heads}",
                              "hidden % heads == 0")


@dataclass
class DiffusionBundle:
    """A trained denoiser with the standardiser statistics and config needed to sample from it."""

    model: Denoiser
    mean: np.ndarray
    std: np.ndarray
    cfg: DiffusionConfig

    def scheduler(self) -> DDPMScheduler:
        """The training (forward-process) scheduler of this bundle."""
        return make_scheduler(self.cfg)


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True when this CPU has native bf16 matmul (avx512_bf16 or amx_bf16)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((ln for ln in fh if ln.startswith("flags")), "")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(cfg: DiffusionConfig, device_type: str = "cpu") -> torch.dtype:
    """Compute dtype: bf16 when asked, or on 'auto' when the device supports it (a CPU with native bf16; any
    CUDA device, as Ampere and later do natively: set dtype='float32' on older GPUs); else fp32."""
    native = device_type != "cpu" or cpu_has_bf16()
    if cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and native):
        return torch.bfloat16
    return torch.float32


def make_scheduler(cfg: DiffusionConfig) -> DDPMScheduler:
    """DDPM forward process of `cfg` (no clipping: standardised features are unbounded)."""
    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                         prediction_type=cfg.prediction_type, clip_sample=False)


def fit_standardizer(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std (float32; std floored at 1e-6 so constant dims stay finite)."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise InputError("features", f"shape {x.shape}", "(N >= 2, D)")
    if not np.isfinite(x).all():
        raise DataError("features", "contains NaN or inf", "finite values")
    return x.mean(0).astype(np.float32), np.maximum(x.std(0), 1e-6).astype(np.float32)


def build_denoiser(cfg: DiffusionConfig, feature_dim: int, cond_dim: int, hardness_dim: int) -> Denoiser:
    """The denoiser `cfg` describes (hardness conditioning only when cfg.use_hardness and K > 0)."""
    return Denoiser(feature_dim, cond_dim, hardness_dim if cfg.use_hardness else 0, hidden=cfg.hidden,
                    layers=cfg.layers, heads=cfg.heads, tokens=cfg.tokens)


def _check_inputs(features: np.ndarray, text: np.ndarray, text_mask: np.ndarray | None,
                  hardness: np.ndarray | None) -> None:
    n = len(features)
    if features.ndim != 2:
        raise InputError("features", f"shape {features.shape}", "(N, D)")
    if text.ndim not in (2, 3) or len(text) != n:
        raise InputError("text", f"shape {text.shape}", f"({n}, E) or ({n}, T, E)")
    if text_mask is not None and (text.ndim != 3 or text_mask.shape != text.shape[:2]):
        raise InputError("text_mask", f"shape {text_mask.shape}", f"{text.shape[:2]} for token text")
    if text_mask is not None and not text_mask.any(1).all():
        raise InputError("text_mask", "some rows have no valid token", "at least one True per row")
    if hardness is not None and (hardness.ndim != 2 or len(hardness) != n):
        raise InputError("hardness", f"shape {hardness.shape}", f"({n}, K)")
    for name, a in (("features", features), ("text", text), ("hardness", hardness)):
        if a is not None and not np.isfinite(a).all():
            raise DataError(name, "contains NaN or inf", "finite values")


def train_target(sched: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the model must output for the scheduler's prediction type."""
    kind = sched.config.prediction_type
    if kind == "sample":
        return x0
    if kind == "epsilon":
        return noise
    return sched.get_velocity(x0, noise, t)


def one_cycle(opt: torch.optim.Optimizer, lr: float, steps: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """OneCycleLR with a 5% warm-up of at least two steps; None (constant lr) below 4 steps. torch's
    OneCycleLR divides by zero when the warm-up ends at step 0 (pct_start * steps == 1, e.g. 20 steps at 5%)."""
    if steps < 4:
        return None
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=max(0.05, 2.0 / steps))


def sampling_weights(groups: np.ndarray | None, balance: float, n: int) -> torch.Tensor | None:
    """Per-sample minibatch weights n_g ** -balance (None: uniform), from each sample's group label."""
    if balance == 0.0:
        return None
    if groups is None:
        raise InputError("groups", f"missing with diffusion.balance={balance}", "a group label per sample")
    groups = np.asarray(groups)
    if groups.shape != (n,) or not np.issubdtype(groups.dtype, np.integer) or (groups < 0).any():
        raise InputError("groups", f"dtype {groups.dtype}, shape {groups.shape}", f"({n},) non-negative integers")
    counts = np.bincount(groups)
    return torch.from_numpy(counts[groups].astype(np.float64) ** -balance)


def optimizer_step(model: torch.nn.Module, sched: DDPMScheduler, opt: torch.optim.Optimizer,
                   lr_sched: torch.optim.lr_scheduler.LRScheduler | None, x0: torch.Tensor, text: torch.Tensor,
                   text_mask: torch.Tensor | None, hardness: torch.Tensor | None, gen: torch.Generator,
                   device: torch.device, dtype: torch.dtype, cfg_dropout: float) -> torch.Tensor:
    """One training step on a minibatch of standardised features `x0` and their conditions: noise, timesteps and
    classifier-free-guidance drops (probability `cfg_dropout`) drawn from `gen` (in that order, on the CPU), the
    denoising loss under autocast to `dtype`, backward, gradient clipping at 1, the optimiser and lr-schedule
    steps. Works on a DDP-wrapped model. Returns the (detached) loss."""
    n = len(x0)
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(0, sched.config.num_train_timesteps, (n,), generator=gen)
    drop = torch.rand(n, generator=gen) < cfg_dropout
    x0, noise, t, drop = (a.to(device) for a in (x0, noise, t, drop))
    xt = sched.add_noise(x0, noise, t)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        out = model(xt, t, text.to(device), None if text_mask is None else text_mask.to(device),
                    None if hardness is None else hardness.to(device), drop)
    loss = torch.nn.functional.mse_loss(out.float(), train_target(sched, x0, noise, t))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if lr_sched is not None:
        lr_sched.step()
    return loss.detach()


def train_denoiser(features: np.ndarray, text: np.ndarray, text_mask: np.ndarray | None,
                   hardness: np.ndarray | None, cfg: DiffusionConfig,
                   on_step: Callable[[int, float, DiffusionBundle], None] | None = None,
                   progress: bool = True, groups: np.ndarray | None = None,
                   device: str | torch.device = "cpu") -> DiffusionBundle:
    """Train a denoiser on features (N, D) given text (N, T, E) + mask (N, T) or pooled (N, E) and hardness (N, K).

    `on_step(step, loss, bundle)` is called after every optimiser step (bundle holds the live model:
    save it to checkpoint). Sampling of minibatches, timesteps, noise and CFG drops follows `cfg.seed`
    (drawn on the CPU whatever the `device`, so a seed means the same batches everywhere); with
    `cfg.balance` > 0, minibatches favour samples of rare `groups` (N,) (see `sampling_weights`).
    The model trains on `device` and is returned on the CPU.
    """
    features = np.asarray(features, np.float32)
    text = np.asarray(text, np.float32)
    text_mask = None if text_mask is None else np.asarray(text_mask, bool)
    hardness = None if (hardness is None or not cfg.use_hardness) else np.asarray(hardness, np.float32)
    _check_inputs(features, text, text_mask, hardness)
    weights = sampling_weights(groups, cfg.balance, len(features))
    mean, std = fit_standardizer(features)
    torch.manual_seed(cfg.seed)
    dev = torch.device(device)
    model = build_denoiser(cfg, features.shape[1], text.shape[-1], 0 if hardness is None else hardness.shape[1])
    model = model.to(dev)
    bundle = DiffusionBundle(model, mean, std, cfg)
    sched = make_scheduler(cfg)
    x_all = torch.from_numpy((features - mean) / std)
    txt_all = torch.from_numpy(text)
    msk_all = None if text_mask is None else torch.from_numpy(text_mask)
    hard_all = None if hardness is None else torch.from_numpy(hardness)
    opt = adamw(model.parameters(), cfg.lr, cfg.weight_decay)
    lr_sched = one_cycle(opt, cfg.lr, cfg.steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    dtype = autocast_dtype(cfg, dev.type)
    model.train()
    bar = tqdm(range(cfg.steps), desc="diffusion train", disable=not progress, mininterval=2.0)
    for step in bar:
        if weights is None:
            idx = torch.randint(0, len(x_all), (min(cfg.batch_size, len(x_all)),), generator=gen)
        else:
            idx = torch.multinomial(weights, cfg.batch_size, replacement=True, generator=gen)
        loss = optimizer_step(model, sched, opt, lr_sched, x_all[idx], txt_all[idx],
                              None if msk_all is None else msk_all[idx], None if hard_all is None else hard_all[idx],
                              gen, dev, dtype, cfg.cfg_dropout)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if on_step is not None:
            on_step(step + 1, float(loss.item()), bundle)
    bundle.model = model.cpu().eval()
    return bundle


def _spec(bundle: DiffusionBundle) -> dict:
    m = bundle.model
    return {"cfg": to_dict(bundle.cfg), "feature_dim": m.feature_dim, "cond_dim": m.cond_dim,
            "hardness_dim": m.hardness_dim}


def save_bundle(bundle: DiffusionBundle, path: str | Path) -> Path:
    """Atomically write weights, standardiser statistics and config (safetensors + JSON metadata)."""
    spec = _spec(bundle)
    state = {f"model.{k}": v.detach().float().cpu().contiguous() for k, v in bundle.model.state_dict().items()}
    state["stats.mean"] = torch.from_numpy(np.ascontiguousarray(bundle.mean, np.float32))
    state["stats.std"] = torch.from_numpy(np.ascontiguousarray(bundle.std, np.float32))
    meta = {"format": FORMAT, "spec": json.dumps(spec, sort_keys=True), "config_hash": config_hash(spec["cfg"])}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(state, str(tmp), metadata=meta)
    return Path(path)


def load_bundle(path: str | Path, expected: DiffusionConfig | None = None) -> DiffusionBundle:
    """Load a bundle; with `expected`, refuse (CheckpointError naming the differing keys) one of another config."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(str(p), "diffusion bundle not found", "a file written by save_bundle")
    try:
        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(str(p), f"unreadable or truncated bundle: {e}", "a complete file written by save_bundle") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(str(p), f"format {meta.get('format')!r}", f"format {FORMAT!r}")
    spec = json.loads(meta["spec"])
    if config_hash(spec["cfg"]) != meta.get("config_hash"):
        raise CheckpointError(str(p), "stored config hash does not match its config (modified metadata)")
    cfg = from_dict(DiffusionConfig, spec["cfg"])
    if expected is not None and config_hash(expected) != meta["config_hash"]:
        want = to_dict(expected)
        diff = [f"{k}: bundle {spec['cfg'].get(k)!r} vs expected {want.get(k)!r}"
                for k in sorted(want) if spec["cfg"].get(k) != want.get(k)]
        raise CheckpointError(str(p), "written with another diffusion config: " + "; ".join(diff),
                              "a bundle trained with the expected config")
    model = build_denoiser(cfg, spec["feature_dim"], spec["cond_dim"], spec["hardness_dim"])
    try:
        model.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model.")}, strict=True)
    except RuntimeError as e:
        raise CheckpointError(str(p), f"weights do not fit the stored spec: {e}") from e
    model.eval()
    return DiffusionBundle(model, state["stats.mean"].numpy(), state["stats.std"].numpy(), cfg)

