"""Comparison plots of two runs (PNG, written atomically): per-predicate recall ordered by training
frequency, and LTVRR band accuracy."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from components.atomic import atomic_path
from components.errors import InputError
from components.evaluation.ltvrr import BANDS


def _save(fig: Figure, path: str | Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return Path(path)


def _bars(ax, x: np.ndarray, a: Sequence[float], b: Sequence[float], labels: Sequence[str]) -> None:
    """Two runs' bars side by side at positions x; NaN values are drawn as 'n/a'."""
    for off, vals, lab in ((-0.2, a, labels[0]), (0.2, b, labels[1])):
        vals = np.asarray(vals, dtype=float)
        ax.bar(x + off, np.nan_to_num(vals), width=0.4, label=lab)
        for xi in x[np.isnan(vals)]:
            ax.text(xi + off, 0.5, "n/a", ha="center", va="bottom", fontsize=6, rotation=90)


def frequency_order(train_counts: Sequence[int]) -> np.ndarray:
    """0-based indices from the most to the least frequent class (ties by index)."""
    counts = np.asarray(train_counts)
    return np.lexsort((np.arange(len(counts)), -counts))


def plot_per_predicate_recall(run_a: Mapping, run_b: Mapping, train_counts: Sequence[int], path: str | Path,
                              labels: Sequence[str] = ("A", "B"), predicate_names: Sequence[str] | None = None,
                              k: int = 100) -> Path:
    """Bars of per-predicate R@k (from evaluate_sgg results) of two runs, most frequent training predicate
    first (ties by id); `train_counts[i]` and `predicate_names[i]` belong to predicate id i+1."""
    key = f"per_predicate_R@{k}"
    for name, run in (("run_a", run_a), ("run_b", run_b)):
        if key not in run:
            raise InputError(name, f"has no {key!r}", f"an evaluate_sgg result computed with K={k}")
    a, b = (np.where(np.asarray(r.get("predicate_image_counts", 1)) == 0, np.nan, np.asarray(r[key], float))
            for r in (run_a, run_b))  # predicates absent from the test GT are drawn as n/a, not 0
    counts = np.asarray(train_counts)
    names = list(predicate_names) if predicate_names is not None else [str(i + 1) for i in range(len(counts))]
    if not len(a) == len(b) == len(counts) == len(names):
        raise InputError("plot_per_predicate_recall", f"lengths differ: runs {len(a)}/{len(b)}, train_counts "
                         f"{len(counts)}, names {len(names)}", "one entry per predicate")
    order = frequency_order(counts)
    fig = Figure(figsize=(max(6.0, 0.28 * len(order)), 4.0))
    ax = fig.add_subplot()
    x = np.arange(len(order))
    _bars(ax, x, a[order], b[order], labels)
    ax.set_xticks(x, [names[i] for i in order], rotation=90, fontsize=7)
    ax.set_ylabel(f"R@{k} (%)")
    ax.set_title(f"Per-predicate R@{k}, predicates by training frequency (left = most frequent)")
    ax.legend()
    return _save(fig, path)


def plot_band_accuracy(report_a: Mapping, report_b: Mapping, path: str | Path,
                       labels: Sequence[str] = ("A", "B")) -> Path:
    """Bars of many/medium/few/all accuracy (from ltvrr_report) of two runs, for S/O and relations."""
    groups = [(g, c) for g in ("sbj_obj", "rel") for c in BANDS + ("all",)]
    try:
        a = [report_a[g][c] for g, c in groups]
        b = [report_b[g][c] for g, c in groups]
    except (KeyError, TypeError) as e:
        raise InputError("plot_band_accuracy", f"report lacks {e}", "ltvrr_report results") from e
    fig = Figure(figsize=(8.0, 4.0))
    ax = fig.add_subplot()
    x = np.arange(len(groups))
    _bars(ax, x, a, b, labels)
    ax.set_xticks(x, [f"{'S/O' if g == 'sbj_obj' else 'rel'}\n{c}" for g, c in groups])
    ax.set_ylabel("mean per-class top-1 accuracy (%)")
    combined = [r.get("combined", math.nan) for r in (report_a, report_b)]
    ax.set_title(f"LTVRR bands; combined {labels[0]} {combined[0]:.2f} vs {labels[1]} {combined[1]:.2f}")
    ax.legend()
    return _save(fig, path)
