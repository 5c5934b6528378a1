"""Post-hoc logit adjustment of saved SGG predictions: predicate scores divided by prior ** tau.

The re-balancing baseline that needs no training (Menon et al.'s post-hoc logit adjustment, on
probabilities): it shows how much mR@K plain re-weighting of a model's own scores buys, and at what
cost in R@K. The background column is left as it is (ranking uses non-background predicates only).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

from components.errors import InputError
from components.evaluation.sgg import SGGEvaluator


def predicate_prior(counts: Sequence[int]) -> np.ndarray:
    """Training frequencies of predicates 1..P from their counts (P,), unseen predicates floored at one."""
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 1 or len(c) == 0 or (c < 0).any() or not np.isfinite(c).all():
        raise InputError("predicate counts", f"shape {c.shape}", "(P,) finite non-negative counts")
    c = np.maximum(c, 1.0)
    return c / c.sum()


def _divisor(prior: np.ndarray, tau: float) -> np.ndarray:
    """prior ** tau, after checking tau."""
    if tau < 0 or not np.isfinite(tau):
        raise InputError("tau", f"{tau}", "a finite number >= 0")
    return prior ** tau


def _divided(rel_scores: np.ndarray, divisor: np.ndarray) -> np.ndarray:
    """A float64 copy of rel_scores (N, 1 + P) with columns 1..P divided by `divisor` (P,)."""
    if rel_scores.ndim != 2 or rel_scores.shape[1] != len(divisor) + 1:
        raise InputError("rel_scores", f"shape {rel_scores.shape}",
                         f"(N, {len(divisor) + 1}) for {len(divisor)} predicates")
    out = np.array(rel_scores, dtype=np.float64)
    out[:, 1:] /= divisor
    return out


def adjust_scores(rel_scores: np.ndarray, prior: np.ndarray, tau: float) -> np.ndarray:
    """rel_scores (N, 1 + P) with columns 1..P divided by prior ** tau (column 0, background, kept)."""
    return _divided(rel_scores, _divisor(prior, tau))


def evaluate_adjusted(images: Iterable[Mapping], prior: np.ndarray, taus: Sequence[float],
                      ks: Sequence[int] = (20, 50, 100), iou_threshold: float = 0.5) -> Iterator[tuple[float, dict]]:
    """(tau, metrics of evaluate_sgg) per tau, in one streaming pass over the images."""
    taus = [float(t) for t in taus]
    if not taus:
        raise InputError("tau", "none given", "one or more values >= 0")
    divisors = [_divisor(prior, tau) for tau in taus]  # once, not per image
    evaluators = [SGGEvaluator(len(prior), ks, iou_threshold) for _ in taus]
    for image in images:
        scores = np.asarray(image["rel_scores"])
        for divisor, ev in zip(divisors, evaluators):
            ev.process({**image, "rel_scores": _divided(scores, divisor)})
    for tau, ev in zip(taus, evaluators):
        yield tau, ev.evaluate()
