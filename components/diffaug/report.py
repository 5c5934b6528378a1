"""DiffAugment results: a plain-text table of LTVRR numbers per variant and PNG plots (matplotlib Agg).

Table columns (percent, mean per-class top-1): relation many/medium/few/all, subject+object all, combined.
Plots: per-band relation and S/O accuracy per variant; a 2-D PCA projection of real vs generated union
features of a few tail relations (same projection for both, fitted on the real features); the diffusion
models' training loss curves.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from components.atomic import atomic_path
from components.errors import InputError

COLUMNS = (("rel", "many"), ("rel", "medium"), ("rel", "few"), ("rel", "all"), ("sbj_obj", "all"))


def results_table(results: Mapping[str, Mapping]) -> str:
    """One line per variant: R many/medium/few/all, S/O all, combined (NaN bands shown as '-')."""
    head = f"{'variant':28s} {'R many':>7s} {'R med':>7s} {'R few':>7s} {'R all':>7s} {'S/O all':>8s} {'comb':>7s}"
    lines = [head, "-" * len(head)]
    for name, rep in results.items():
        vals = [rep[a][b] for a, b in COLUMNS] + [rep["combined"]]
        cells = [f"{v:7.2f}" if np.isfinite(v) else f"{'-':>7s}" for v in vals]
        lines.append(f"{name:28s} {cells[0]} {cells[1]} {cells[2]} {cells[3]} {cells[4]:>8s} {cells[5]}")
    return "\n".join(lines)


def _save(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def plot_bands(results: Mapping[str, Mapping], path: str | Path) -> Path:
    """Grouped bars: relation accuracy in many/medium/few/all and S/O all, one bar per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    groups = [f"R {b}" for _, b in COLUMNS[:4]] + ["S/O all"]
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4))
    x = np.arange(len(groups))
    for i, n in enumerate(names):
        vals = [results[n][a][b] for a, b in COLUMNS]
        ax.bar(x + i * width - 0.4 + width / 2, np.nan_to_num(vals), width, label=n)
    ax.set_xticks(x, groups)
    ax.set_ylabel("mean per-class top-1 accuracy (%)")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def window_means(values: Sequence[float], window: int) -> tuple[np.ndarray, np.ndarray]:
    """(last step of each window, mean of the window) over consecutive `window`-step windows of a per-step series
    (steps 1-based; a shorter last window is kept): a loss curve short enough to log and readable when plotted."""
    v = np.asarray(values, np.float64)
    if window < 1:
        raise InputError("window", f"{window}", "at least 1 step")
    starts = np.arange(0, len(v), window)
    ends = np.minimum(starts + window, len(v))
    return ends, np.array([v[a:b].mean() for a, b in zip(starts, ends)])


def plot_loss_curves(curves: Mapping[str, Sequence[float]], path: str | Path, window: int = 20) -> Path:
    """Per-step training losses of each named model as `window`-step means against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, losses in curves.items():
        ax.plot(*window_means(losses, window), label=name)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel(f"denoising loss ({window}-step mean)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_projection(real: np.ndarray, real_labels: np.ndarray, generated: np.ndarray, gen_labels: np.ndarray,
                    names: list[str], path: str | Path, max_classes: int = 5, max_points: int = 300) -> Path:
    """PCA (fitted on real) scatter of real (dots) vs generated (crosses) features of up to `max_classes` labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    shared = [c for c in np.unique(gen_labels) if (real_labels == c).sum() >= 2]
    counts = [(int((real_labels == c).sum()), int(c)) for c in shared]
    classes = [c for _, c in sorted(counts, reverse=True)[:max_classes]]
    fig, ax = plt.subplots(figsize=(6, 5))
    if classes:
        rsel = np.isin(real_labels, classes)
        pca = PCA(2, random_state=0).fit(real[rsel])
        for i, c in enumerate(classes):
            colour = f"C{i}"
            for feats, labels, marker, tag in ((real, real_labels, "o", "real"), (generated, gen_labels, "x", "gen")):
                pts = feats[labels == c][:max_points]
                if len(pts):
                    xy = pca.transform(pts)
                    ax.scatter(xy[:, 0], xy[:, 1], s=8, c=colour, marker=marker, alpha=0.5, label=f"{names[c]} ({tag})")
        ax.legend(fontsize=6, ncol=2)
    ax.set_title("real (o) vs generated (x) union features, PCA of real")
    return _save(fig, path)
