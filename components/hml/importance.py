"""HML model-reconstruction (MR) pieces as pure tensor functions: diagonal empirical Fisher running
mean, RWalk-style parameter importance, its normalisation, and the MR penalty.

Formulas (HML paper, Eq. 6-8; importance after Chaudhry et al. 2018, RWalk):
- F_t = (g_t^2 + (t-1) F_{t-1}) / t                                  `fisher_running_mean`
- dOmega_t = max(0, -g_t * dtheta_t) / (0.5 * F_t * dtheta_t^2 + eps)   `importance_increment`
- Omega_hat = sigmoid(log10(P * Omega / sum(Omega)))                  `normalize_importance`
- MR = sum_p (F_p + Omega_hat_p) * (theta_p - theta*_p)^2 / P          `mr_loss`

Choices where the paper is ambiguous (and where we differ from the authors' code):
- Sign: -g * dtheta is the first-order *decrease* of the loss caused by the parameter's move, so a
  move that lowered the loss earns positive importance and one that raised it is clamped to 0 (the
  released code used +g * dtheta, which clamps nearly everything).
- Gradients: g_t is the gradient of the *total* stage loss (CE + CR + lambda MR) at step t, read after
  backward (all-reduced under DDP, so every rank holds the same F and Omega). It is the gradient that
  actually moved the parameters, which keeps -g * dtheta a faithful estimate of the loss decrease.
  Consequence: F is the square of the rank-averaged gradient, whose noise shrinks with the number of
  workers, so F (and MR's strength, and Omega's denominator) depends on the DDP world size, as it would on
  the batch size in one process. Compare runs at the same num_workers x batch_size.
- Interval: every optimiser step (RWalk's reference uses a 10-step window; the paper writes the
  per-iteration sum). F_t in the denominator is the running mean *including* step t.
- eps = float32 machine epsilon (as in RWalk's reference), guarding parameters that did not move.
- Normalisation: P = number of elements normalised together (all MR parameters of a model), so that
  P * Omega / sum(Omega) = Omega / mean(Omega) and a parameter of average importance maps to
  sigmoid(0) = 0.5 (we centre on the arithmetic mean; the released code centred on the geometric mean).
  Zeros: an element with Omega = 0 has log10(0) = -inf and maps to sigmoid(-inf) = 0 exactly; if the
  whole sum is 0 (no step lowered the loss) every element maps to 0. No NaN is ever produced.
- Stages: MR at stage k uses only stage k-1's anchors, F and Omega (the previous stage model already
  distilled the earlier ones through CR); nothing is accumulated across stages.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from components.errors import InputError

EPS = float(torch.finfo(torch.float32).eps)


def fisher_running_mean(prev: torch.Tensor, grad_sq: torch.Tensor, t: int) -> torch.Tensor:
    """F_t = (g_t^2 + (t-1) F_{t-1}) / t for step t >= 1 (t = 1 gives g_1^2)."""
    if t < 1:
        raise InputError("t", f"{t}", "a 1-based step number >= 1")
    return torch.add(grad_sq, prev, alpha=t - 1).div_(t)  # one temporary: this runs on every parameter, every step


def importance_increment(grad: torch.Tensor, delta: torch.Tensor, fisher: torch.Tensor,
                         eps: float = EPS) -> torch.Tensor:
    """max(0, -g * dtheta) / (0.5 * F * dtheta^2 + eps): first-order loss decrease per unit of movement cost."""
    # In-place ops on two fresh temporaries (inputs untouched): ~2x faster than the naive expression.
    gain = torch.mul(grad, delta).neg_().clamp_(min=0.0)
    return gain.div_(delta.square().mul_(fisher).mul_(0.5).add_(eps))


def normalize_importance(omega: torch.Tensor | Mapping[str, torch.Tensor]):
    """sigmoid(log10(P * omega / sum omega)) over all elements (one tensor or a dict of tensors)."""
    if isinstance(omega, Mapping):
        flat = torch.cat([v.reshape(-1) for v in omega.values()]) if omega else torch.zeros(0)
        normed = normalize_importance(flat)
        out, start = {}, 0
        for k, v in omega.items():
            out[k] = normed[start:start + v.numel()].reshape(v.shape)
            start += v.numel()
        return out
    if (omega < 0).any():
        raise InputError("omega", "has negative entries", "non-negative importance")
    total = omega.sum()
    if total <= 0:
        return torch.zeros_like(omega)
    ratio = omega.numel() * omega / total
    return torch.sigmoid(torch.log10(ratio))  # log10(0) = -inf -> sigmoid = 0, no NaN


class _WeightedSquaredDistance(torch.autograd.Function):
    """sum(w * (theta - theta*)^2) over all params as one flat vector, differentiable in the params only.

    `anchor` and `weight` (= F + Omega, precomputed once per stage) are flat in the params' order. The
    params are concatenated once per step, so the cost is a handful of whole-vector ops whatever the number
    of parameter tensors; the hand-written backward 2 w (theta - theta*) comes from one saved tensor and
    reaches each param as a view of one buffer."""

    @staticmethod
    def forward(ctx, anchor: torch.Tensor, weight: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        diff = torch.cat([p.reshape(-1) for p in params]).sub_(anchor)
        weighted = torch.mul(weight, diff)
        ctx.save_for_backward(weighted)
        ctx.shapes = [p.shape for p in params]
        return torch.dot(weighted, diff)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (weighted,) = ctx.saved_tensors
        flat = weighted * (2.0 * grad)
        parts = flat.split([s.numel() for s in ctx.shapes])
        return (None, None, *(g.view(s) for g, s in zip(parts, ctx.shapes)))


def mr_buffers(names: Sequence[str], anchors: Mapping[str, torch.Tensor], fisher: Mapping[str, torch.Tensor],
               importance: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat anchor theta* and weight F + Omega over `names` in order (computed once per stage, not per step)."""
    missing = [n for n in names if n not in anchors or n not in fisher or n not in importance]
    if missing:
        raise InputError("MR parameters", f"no anchor/Fisher/importance for {missing[:5]}",
                         "the previous stage's checkpoint of the same model")
    if not names:
        raise InputError("MR parameters", "empty", "at least one parameter")
    anchor = torch.cat([anchors[n].detach().reshape(-1) for n in names])
    weight = torch.cat([torch.add(fisher[n], importance[n]).reshape(-1) for n in names])
    return anchor, weight


def mr_loss_flat(params: Sequence[torch.Tensor], anchor: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """MR of `params` against flat buffers from `mr_buffers` (same order): sum w (theta - theta*)^2 / P."""
    return _WeightedSquaredDistance.apply(anchor, weight, *params) / anchor.numel()


def mr_loss(params: Mapping[str, torch.Tensor], anchors: Mapping[str, torch.Tensor],
            fisher: Mapping[str, torch.Tensor], importance: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """sum_p (F_p + Omega_p) * (theta_p - theta*_p)^2 / P over the named params (P = their element count)."""
    anchor, weight = mr_buffers(list(params), anchors, fisher, importance)
    return mr_loss_flat(list(params.values()), anchor, weight)
