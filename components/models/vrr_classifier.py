"""LSVRU-style relation classifier over subject, object and union features (GQA-LT / vrr-planted).

Three branches map features into a shared embedding space: subject (subject feature), object (object
feature) and relation (subject, object and union features concatenated). Classes are embedded by a
learnable MLP applied to FIXED word vectors of their names (so similar names start near each other, as
in LSVRU's language branch). Logits = scale * cosine(branch embedding, class embedding); `scale` is a
learnable inverse temperature (log-parametrised). Outputs a dict of subject / object / relation logits.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from components.errors import InputError


def _mlp(inp: int, hidden: int, out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, out))


class VRRClassifier(nn.Module):
    """VRRClassifier(feature_dim, object_vectors (O, W), predicate_vectors (P, W))(sf, of, uf) -> logits dict."""

    def __init__(self, feature_dim: int, object_vectors: np.ndarray, predicate_vectors: np.ndarray,
                 embed_dim: int = 256, hidden: int = 512, dropout: float = 0.1, init_scale: float = 16.0) -> None:
        super().__init__()
        # copied: the vectors may be read-only views of Ray's object store, which the buffers must not share
        ov, pv = (torch.tensor(np.asarray(v, np.float32)) for v in (object_vectors, predicate_vectors))
        if ov.dim() != 2 or pv.dim() != 2 or ov.shape[1] != pv.shape[1]:
            raise InputError("class word vectors", f"shapes {tuple(ov.shape)} / {tuple(pv.shape)}",
                             "(O, W) object and (P, W) predicate vectors of one width W")
        if feature_dim < 1 or embed_dim < 1:
            raise InputError("VRRClassifier", f"feature_dim={feature_dim}, embed_dim={embed_dim}", "positive sizes")
        self.feature_dim, self.num_objects, self.num_predicates = feature_dim, len(ov), len(pv)
        self.register_buffer("object_vectors", ov)
        self.register_buffer("predicate_vectors", pv)
        self.subject_branch = _mlp(feature_dim, hidden, embed_dim, dropout)
        self.object_branch = _mlp(feature_dim, hidden, embed_dim, dropout)
        self.relation_branch = _mlp(3 * feature_dim, hidden, embed_dim, dropout)
        self.object_classes = _mlp(ov.shape[1], hidden, embed_dim, 0.0)
        self.predicate_classes = _mlp(pv.shape[1], hidden, embed_dim, 0.0)
        self.log_scale = nn.Parameter(torch.tensor(float(np.log(init_scale))))

    def embed(self, sf: torch.Tensor, of: torch.Tensor, uf: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unnormalised branch embeddings (B, embed_dim) for subject, object and relation."""
        for name, x in (("subject_feature", sf), ("object_feature", of), ("union_feature", uf)):
            if x.dim() != 2 or x.shape[1] != self.feature_dim or len(x) != len(sf):
                raise InputError(name, f"shape {tuple(x.shape)}", f"({len(sf)}, {self.feature_dim})")
        return {"subject": self.subject_branch(sf), "object": self.object_branch(of),
                "relation": self.relation_branch(torch.cat([sf, of, uf], dim=1))}

    def logits_from(self, emb: torch.Tensor, kind: str) -> torch.Tensor:
        """Scaled cosine logits of embeddings against object ('subject'/'object') or predicate classes."""
        classes = (self.predicate_classes(self.predicate_vectors) if kind == "relation"
                   else self.object_classes(self.object_vectors))
        return self.log_scale.exp() * F.normalize(emb, dim=1) @ F.normalize(classes, dim=1).T

    def forward(self, sf: torch.Tensor, of: torch.Tensor, uf: torch.Tensor) -> dict[str, torch.Tensor]:
        """{'subject': (B, O), 'object': (B, O), 'relation': (B, P)} logits."""
        return {k: self.logits_from(v, k) for k, v in self.embed(sf, of, uf).items()}
