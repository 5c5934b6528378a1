"""Long-tail baseline losses of LTVRR (GQA-LT): WCE class weights, VilHub regulariser, RelMix embedding mixing.

- WCE: w_c = sum(f) / f_c with f = training count + 1, normalised to mean 1.
- VilHub: mean over classes of (batch-mean softmax_c - 1/C)^2, times `scale` (pushes the batch's average
  prediction towards uniform, against the head classes' "hubness").
- RelMix (our reading of "mix tail with medium/head embeddings"): each tail-relation sample's relation
  embedding is mixed with that of a random medium/head sample of the batch, lambda ~ Beta(a, a) folded to
  >= 0.5 so the tail sample dominates; the loss is lambda * CE(tail label) + (1 - lambda) * CE(other label).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from components.errors import InputError


def wce_weights(counts: np.ndarray) -> torch.Tensor:
    """(C,) weights sum(f)/f_c, f = counts + 1, divided by their mean."""
    f = np.asarray(counts, np.float64) + 1.0
    if f.ndim != 1 or (f < 1).any():
        raise InputError("class counts", f"shape {f.shape} or negative counts", "(C,) non-negative counts")
    w = f.sum() / f
    return torch.tensor(w / w.mean(), dtype=torch.float32)


def vilhub_loss(logits: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """scale * mean_c((mean over batch of softmax_c) - 1/C)^2."""
    p = logits.softmax(dim=1).mean(dim=0)
    return scale * ((p - 1.0 / logits.shape[1]) ** 2).mean()


def relmix_loss(model, rel_emb: torch.Tensor, labels: torch.Tensor, is_tail: torch.Tensor,
                generator: torch.Generator, alpha: float = 1.0, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mixed-embedding CE for the batch's tail samples (0 when the batch lacks tail or non-tail samples)."""
    tail, other = torch.nonzero(is_tail).flatten(), torch.nonzero(~is_tail).flatten()
    if len(tail) == 0 or len(other) == 0:
        return rel_emb.sum() * 0.0
    partner = other[torch.randint(len(other), (len(tail),), generator=generator).to(other.device)]
    rng = np.random.default_rng(int(torch.randint(2**31, (1,), generator=generator)))
    lam = torch.from_numpy(rng.beta(alpha, alpha, size=len(tail)).astype(np.float32)).to(rel_emb.device)
    lam = torch.maximum(lam, 1 - lam)[:, None]
    logits = model.logits_from(lam * rel_emb[tail] + (1 - lam) * rel_emb[partner], "relation")
    lam = lam.flatten()
    return (lam * F.cross_entropy(logits, labels[tail], weight=weight, reduction="none")
            + (1 - lam) * F.cross_entropy(logits, labels[partner], weight=weight, reduction="none")).mean()
