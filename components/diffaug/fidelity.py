"""Label fidelity of generated features: how often a classifier gives them their intended label, vs real ones.

Low diffusion loss does not imply that samples carry their class (REFERENCE.md: a prototype's samples
were 27% faithful vs 41% for real held-out features). `ratio` = generated rate / real rate; near 1 means
the samples are as recognisable as real features of the same classes.
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


def fidelity(classifier_fn: Callable, generated: np.ndarray, intended_labels: np.ndarray,
             real_heldout: np.ndarray, real_labels: np.ndarray) -> dict:
    """{'generated_rate', 'real_rate', 'ratio', 'n_generated', 'n_real'} for any callable features -> (N, C) logits."""
    gen = hit_rate(classifier_fn, np.asarray(generated, np.float32), intended_labels, "generated")
    real = hit_rate(classifier_fn, np.asarray(real_heldout, np.float32), real_labels, "real_heldout")
    return {"generated_rate": gen, "real_rate": real, "ratio": gen / real if real > 0 else float("nan"),
            "n_generated": len(generated), "n_real": len(real_heldout)}
