"""HML predicate tree: greedy cosine clustering of predicate phrase vectors (most to least frequent)
and coarse-to-fine layers (layer k = k-th most frequent predicate of each group); stage s trains layer s.

Choices where the paper is loose (all documented here):
- Ties in frequency are broken by predicate order (index), so the tree is deterministic.
- "Rare singleton groups go to the last layer": a singleton group is *rare* when its count is below the
  count of every multi-member group's head (the least frequent layer-1 head); rarer singletons would
  otherwise sit with the head classes in stage 1. Frequent singletons stay in layer 1.
- The number of layers is the size of the largest multi-member group (1 if there is none), capped by
  `num_layers` (deeper members merge into the last layer).
- `overrides` ({predicate: other predicate}) move a predicate into the other predicate's group after
  clustering and before layer assignment ("soft manual pruning").
- The coarse parent of a predicate is its group's layer-1 member (itself for layer-1 predicates and
  for rare singletons); `to_json()["parent"]` maps 1-based predicate ids (strings) to parent ids.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from components.atomic import atomic_path, write_json
from components.errors import DataError, InputError

TREE_VERSION = 1


@dataclass
class PredicateTree:
    """Groups (0-based predicate indices, most frequent first), 1-based layer and parent per predicate."""

    predicates: list[str]
    counts: list[int]
    groups: list[list[int]]
    layer: list[int]
    threshold: float
    overrides: dict[str, str] = field(default_factory=dict)

    @property
    def num_stages(self) -> int:
        return max(self.layer) if self.layer else 0

    @property
    def parent(self) -> list[int]:
        """0-based parent index per predicate: the layer-1 member of its group (itself if none)."""
        out = list(range(len(self.predicates)))
        for g in self.groups:
            heads = [i for i in g if self.layer[i] == 1]
            for i in g:
                out[i] = heads[0] if heads else i
        return out

    def stage_predicates(self, stage: int) -> list[int]:
        """1-based predicate ids trained (as positives) in `stage` (1-based)."""
        if not 1 <= stage <= self.num_stages:
            raise InputError(f"stage {stage}", "out of range", f"1..{self.num_stages}")
        return [i + 1 for i, l in enumerate(self.layer) if l == stage]

    def seen_predicates(self, stage: int) -> list[int]:
        """1-based predicate ids of stages 1..`stage` (the classes the stage's CE softmax spans)."""
        return sorted(p for s in range(1, stage + 1) for p in self.stage_predicates(s))

    def to_json(self) -> dict:
        names = self.predicates
        return {
            "version": TREE_VERSION,
            "threshold": self.threshold,
            "num_stages": self.num_stages,
            "predicates": names,
            "counts": self.counts,
            "groups": [[names[i] for i in g] for g in self.groups],
            "layer": {names[i]: self.layer[i] for i in range(len(names))},
            "parent": {str(i + 1): p + 1 for i, p in enumerate(self.parent)},
            "overrides": self.overrides,
        }

    @classmethod
    def from_json(cls, d: Mapping, where: str = "predicate tree") -> PredicateTree:
        need = ("version", "threshold", "predicates", "counts", "groups", "layer")
        missing = [k for k in need if k not in d]
        if missing:
            raise DataError(where, f"missing keys {missing}", f"keys {list(need)}")
        if int(d["version"]) != TREE_VERSION:
            raise DataError(where, f"version {d['version']}", f"version {TREE_VERSION}")
        names = list(d["predicates"])
        index = {n: i for i, n in enumerate(names)}
        try:
            groups = [[index[n] for n in g] for g in d["groups"]]
            layer = [int(d["layer"][n]) for n in names]
        except KeyError as e:
            raise DataError(where, f"unknown predicate {e}", "groups/layers naming listed predicates") from e
        if sorted(i for g in groups for i in g) != list(range(len(names))):
            raise DataError(where, "groups do not partition the predicates", "each predicate in one group")
        if layer and sorted(set(layer)) != list(range(1, max(layer) + 1)):
            raise DataError(where, f"layers {sorted(set(layer))}",
                            "layers 1..L with none empty (a predicate in no stage, or a stage without predicates)")
        return cls(names, [int(c) for c in d["counts"]], groups, layer, float(d["threshold"]),
                   dict(d.get("overrides", {})))

    def save(self, path: str | Path) -> Path:
        """Write the tree as JSON atomically."""
        return write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> PredicateTree:
        p = Path(path)
        if not p.is_file():
            raise DataError(str(p), "predicate tree file not found", "a JSON file written by PredicateTree.save")
        try:
            return cls.from_json(json.loads(p.read_text()), where=str(p))
        except json.JSONDecodeError as e:
            raise DataError(str(p), f"corrupt JSON: {e}") from e

    def draw(self, path: str | Path) -> Path:
        """PNG picture of the tree: groups as columns, layers as rows, lines from parent to members."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        n_groups, n_layers = len(self.groups), max(self.num_stages, 1)
        cells: dict[tuple[int, int], list[int]] = {}
        for gx, g in enumerate(self.groups):
            for i in g:  # groups are sorted most frequent first
                cells.setdefault((gx, self.layer[i]), []).append(i)
        rows = [max([len(v) for (gx, l), v in cells.items() if l == layer] or [1]) for layer in range(1, n_layers + 1)]
        base = np.concatenate([[0], np.cumsum(rows)[:-1]]) + np.arange(n_layers)  # a spacer row between layers
        pos = {i: (gx, base[l - 1] + j) for (gx, l), members in cells.items() for j, i in enumerate(members)}
        total = base[-1] + rows[-1]
        fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * n_groups), max(2.5, 0.45 * total + 1.2)))
        parent = self.parent
        for i, (x, y) in pos.items():
            if parent[i] != i:
                px, py = pos[parent[i]]
                ax.plot([px, x], [py, y], color="0.6", lw=0.8, zorder=1)
        for i, (x, y) in pos.items():
            ax.text(x, y, f"{self.predicates[i]} ({self.counts[i]})", ha="center", va="center", fontsize=7,
                    bbox={"boxstyle": "round", "fc": "#e8f0fe" if self.layer[i] == 1 else "white", "ec": "0.4"})
        for b in base[1:]:
            ax.axhline(b - 1, color="0.85", lw=0.8, zorder=0)
        ax.set_xlim(-0.7, n_groups - 0.3)
        ax.set_ylim(total - 0.3, -0.7)
        ax.set_yticks([b + (r - 1) / 2 for b, r in zip(base, rows)], [f"stage {s}" for s in range(1, n_layers + 1)])
        ax.set_xticks(range(n_groups), [f"g{g + 1}" for g in range(n_groups)])
        ax.set_title(f"HML predicate tree (T_SS = {self.threshold}; groups as columns, stages as rows)")
        fig.tight_layout()
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        plt.close(fig)
        return Path(path)


def _as_matrix(predicates: Sequence[str], vectors) -> np.ndarray:
    """Phrase vectors from KeyedVectors, a (P, D) array, or a {predicate: vector} mapping."""
    if hasattr(vectors, "key_to_index"):
        from components.taxonomy.vectors import phrase_vectors

        return phrase_vectors(vectors, list(predicates))
    if isinstance(vectors, Mapping):
        missing = [p for p in predicates if p not in vectors]
        if missing:
            raise InputError("vectors", f"no vector for {missing}", "one vector per predicate")
        return np.stack([np.asarray(vectors[p], dtype=np.float64) for p in predicates])
    mat = np.asarray(vectors, dtype=np.float64)
    if mat.ndim != 2 or mat.shape[0] != len(predicates):
        raise InputError("vectors", f"shape {mat.shape}", f"({len(predicates)}, D)")
    return mat


def _as_counts(predicates: Sequence[str], counts) -> np.ndarray:
    if isinstance(counts, Mapping):
        missing = [p for p in predicates if p not in counts]
        if missing:
            raise InputError("counts", f"no count for {missing}", "a count per predicate")
        counts = [counts[p] for p in predicates]
    arr = np.asarray(counts, dtype=np.int64)
    if arr.shape != (len(predicates),) or (arr < 0).any():
        raise InputError("counts", f"shape {arr.shape} or negative values", f"{len(predicates)} counts >= 0")
    return arr


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=-1)
    nb = np.linalg.norm(b, axis=-1)
    return (a @ b) / np.maximum(na * nb, 1e-12)


def cluster_predicates(order: Sequence[int], vecs: np.ndarray, threshold: float) -> list[list[int]]:
    """Greedy clustering: visit `order`; join the most similar group if cosine >= threshold (running-mean
    representation R <- (n R + v) / (n + 1)), else open a new group."""
    groups: list[list[int]] = []
    reps: list[np.ndarray] = []
    for i in order:
        v = vecs[i]
        if reps:
            sims = _cos(np.stack(reps), v)
            best = int(np.argmax(sims))
            if sims[best] >= threshold:
                n = len(groups[best])
                reps[best] = (n * reps[best] + v) / (n + 1)
                groups[best].append(i)
                continue
        groups.append([i])
        reps.append(v.astype(np.float64).copy())
    return groups


def build_predicate_tree(predicates: list[str], counts: dict[str, int] | list[int], vectors,
                         threshold: float = 0.7, num_layers: int | None = None,
                         overrides: dict[str, str] | None = None) -> PredicateTree:
    """Predicate tree of the HML paper (see module docstring for the exact rules)."""
    if not predicates:
        raise InputError("predicates", "empty list", "at least one predicate name")
    if len(set(predicates)) != len(predicates):
        raise InputError("predicates", "duplicate names", "unique predicate names")
    if not -1.0 <= threshold <= 1.0:
        raise InputError("threshold", f"{threshold}", "a cosine similarity in [-1, 1]")
    if num_layers is not None and num_layers < 1:
        raise InputError("num_layers", f"{num_layers}", "an integer >= 1 or None")
    cnt = _as_counts(predicates, counts)
    vecs = _as_matrix(predicates, vectors)
    order = sorted(range(len(predicates)), key=lambda i: (-cnt[i], i))
    groups = cluster_predicates(order, vecs, threshold)
    overrides = dict(overrides or {})
    index = {p: i for i, p in enumerate(predicates)}
    moved_to_moved = [f"{src} -> {dst}" for src, dst in overrides.items() if dst in overrides]
    if moved_to_moved:  # chains (a -> b, b -> c) and self-moves (a -> a) would depend on the dict's order
        raise InputError("overrides", f"{moved_to_moved} move a predicate to one that is itself moved",
                         "targets that stay in their groups")
    for src, dst in overrides.items():
        unknown = [n for n in (src, dst) if n not in index]
        if unknown:
            raise InputError("overrides", f"unknown predicates {unknown}", "names from the predicate list")
        i, j = index[src], index[dst]
        for g in groups:
            if i in g:
                g.remove(i)
        next(g for g in groups if j in g).append(i)
    groups = [sorted(g, key=lambda i: (-cnt[i], i)) for g in groups if g]
    multi = [g for g in groups if len(g) > 1]
    depth = max((len(g) for g in multi), default=1)
    if num_layers is not None:
        depth = min(depth, num_layers)
    rare_below = min((cnt[g[0]] for g in multi), default=0)
    layer = [0] * len(predicates)
    for g in groups:
        if len(g) == 1 and cnt[g[0]] < rare_below:
            layer[g[0]] = depth
            continue
        for k, i in enumerate(g):
            layer[i] = min(k + 1, depth)
    return PredicateTree(list(predicates), [int(c) for c in cnt], groups, layer, float(threshold), overrides)
