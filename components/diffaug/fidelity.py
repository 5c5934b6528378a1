"""Label fidelity of generated features: how often a classifier gives them their intended label, vs real ones,
and how many of them are near-copies of training samples.

Low diffusion loss does not imply that samples carry their class (REFERENCE.md: a prototype's samples
were 27% faithful vs 41% for real held-out features). `ratio` = generated rate / real rate; near 1 means
the samples are as recognisable as real features of the same classes. A generator can also beat the real
rate by memorising: a copy of a training sample is recognised by a classifier trained on it. `copy_rate`
measures that, so a high fidelity is never read without it.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from components.errors import InputError


def hit_rate(classifier_fn: Callable, feats: np.ndarray, labels: np.ndarray, name: str) -> float:
    """Share of `feats` whose argmax logit under `classifier_fn` is their label (`name` names them in errors)."""
    labels = np.asarray(labels).reshape(-1)
    if len(feats) != len(labels) or len(feats) == 0:
        raise InputError(name, f"{len(feats)} features for {len(labels)} labels", "equal, non-zero counts")
    with torch.no_grad():
        logits = classifier_fn(feats)
    logits = logits.detach().cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
    if logits.ndim != 2 or len(logits) != len(labels):
        raise InputError("classifier_fn output", f"shape {logits.shape}", f"({len(labels)}, C) logits")
    return float((logits.argmax(1) == labels).mean())


SPREAD_BOUNDS = (1 / 3, 3.0)  # outside: the generator has diverged or collapsed (lr 3e-2 gave 31x; docs/experiments.md)


def spread_ratio(generated: np.ndarray, real: np.ndarray) -> float:
    """Mean per-dimension std of `generated` over that of `real` features (1 = the real spread; guidance
    3 measured 1.0, guidance 6 1.15, a diverged generator 6-31)."""
    generated, real = np.asarray(generated), np.asarray(real)  # no float64 copy: `real` may be a whole training set
    if generated.ndim != 2 or real.ndim != 2 or generated.shape[1] != real.shape[1] or len(real) < 2:
        raise InputError("spread_ratio features", f"shapes {generated.shape} and {real.shape}",
                         "(N, D) generated and (M >= 2, D) real features")
    denom = float(real.std(0).mean())
    if not denom > 0:
        raise InputError("spread_ratio real features", "have zero spread", "real features that vary")
    return float(generated.std(0).mean()) / denom


def spread_warning(spread: float) -> str | None:
    """The warning to print when a spread ratio is outside SPREAD_BOUNDS (None inside them)."""
    lo, hi = SPREAD_BOUNDS
    if lo <= spread <= hi:
        return None
    return (f"warning: generated features spread {spread:.2f}x the real training features (expected "
            f"{lo:.2f}-{hi:.1f}): the diffusion model has diverged or collapsed; lower diffusion.lr or check "
            "its loss curve")


def fidelity(classifier_fn: Callable, generated: np.ndarray, intended_labels: np.ndarray,
             real_heldout: np.ndarray, real_labels: np.ndarray) -> dict:
    """{'generated_rate', 'real_rate', 'ratio', 'n_generated', 'n_real'} for any callable features -> (N, C) logits."""
    gen = hit_rate(classifier_fn, np.asarray(generated, np.float32), intended_labels, "generated")
    real = hit_rate(classifier_fn, np.asarray(real_heldout, np.float32), real_labels, "real_heldout")
    return {"generated_rate": gen, "real_rate": real, "ratio": gen / real if real > 0 else float("nan"),
            "n_generated": len(generated), "n_real": len(real_heldout)}


def nearest_same_label_distance(feats: np.ndarray, labels: np.ndarray, train: np.ndarray,
                                train_labels: np.ndarray) -> np.ndarray:
    """(N,) Euclidean distance from each feature to the nearest training feature of its own label (inf when the
    label has no training sample); computed label by label, so memory stays at one label's block."""
    feats, train = np.asarray(feats, np.float32), np.asarray(train, np.float32)
    labels, train_labels = np.asarray(labels).reshape(-1), np.asarray(train_labels).reshape(-1)
    if feats.ndim != 2 or train.ndim != 2 or feats.shape[1] != train.shape[1]:
        raise InputError("features", f"shapes {feats.shape} and {train.shape}", "(N, D) and (M, D) with the same D")
    if len(feats) != len(labels) or len(train) != len(train_labels):
        raise InputError("labels", f"{len(labels)} / {len(train_labels)} labels for {len(feats)} / {len(train)} rows",
                         "one label per row")
    out = np.full(len(feats), np.inf)
    for c in np.unique(labels):
        rows, ref = np.flatnonzero(labels == c), train[train_labels == c]
        if len(ref):
            d2 = (feats[rows] ** 2).sum(1)[:, None] - 2.0 * feats[rows] @ ref.T + (ref ** 2).sum(1)[None]
            out[rows] = np.sqrt(np.maximum(d2.min(1), 0.0))
    return out


def copy_threshold(train: np.ndarray, train_labels: np.ndarray, real_heldout: np.ndarray, real_labels: np.ndarray,
                   factor: float = 0.5) -> tuple[float, float]:
    """(threshold, real_copy_rate): `factor` x the median distance of real held-out samples to the nearest training
    sample of their label, and the share of those real samples below it (near 0 by construction). Held-out real
    samples set the scale, so it is computed once per held-out set and passed to `copy_rate`."""
    real = nearest_same_label_distance(real_heldout, real_labels, train, train_labels)
    finite = real[np.isfinite(real)]
    if not len(finite):
        raise InputError("real_heldout", "no sample has a training sample of its label", "overlapping labels")
    threshold = factor * float(np.median(finite))
    return threshold, float((real < threshold).mean())


def copy_rate(generated: np.ndarray, intended_labels: np.ndarray, train: np.ndarray, train_labels: np.ndarray,
              threshold: float) -> float:
    """Share of generated samples closer to a training sample of their label than `threshold` (from
    `copy_threshold`): a memorising generator's rate is high, a real held-out set's is near 0."""
    return float((nearest_same_label_distance(generated, intended_labels, train, train_labels) < threshold).mean())
