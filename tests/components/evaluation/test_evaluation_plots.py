"""Comparison plots: frequency order, PNG files written atomically, input errors."""
from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest

from benchmarks.bench_eval import synthetic_image
from components.errors import InputError
from components.evaluation.ltvrr import ltvrr_report
from components.evaluation.plots import frequency_order, plot_band_accuracy, plot_per_predicate_recall
from components.evaluation.sgg import evaluate_sgg


def test_frequency_order_most_frequent_first_ties_by_id():
    assert frequency_order([5, 10, 10, 1]).tolist() == [1, 2, 0, 3]


def test_plots_write_png(tmp_path):
    c = 6
    runs = [evaluate_sgg([synthetic_image(i + s, num_predicates=c, boxes=6) for i in range(8)], c) for s in (0, 50)]
    f = plot_per_predicate_recall(runs[0], runs[1], [60, 5, 30, 1, 0, 9], tmp_path / "pp.png", labels=("base", "hml"),
                                  predicate_names=list("abcdef"))
    assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and mpimg.imread(f).shape[2] in (3, 4)
    g = np.array([0, 1, 2, 3, 0, 1])
    reps = [ltvrr_report(g, g, g, (g + s) % 4, g, g, {i: i for i in range(4)}, {i: i for i in range(4)})
            for s in (0, 1)]
    f = plot_band_accuracy(reps[0], reps[1], tmp_path / "bands.png", labels=("ce", "diffaug"))
    assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bands.png", "pp.png"]  # no temp files left


def test_plot_input_errors(tmp_path):
    run = {"per_predicate_R@100": [1.0, 2.0]}
    with pytest.raises(InputError, match="lengths differ"):
        plot_per_predicate_recall(run, run, [1, 2, 3], tmp_path / "x.png")
    with pytest.raises(InputError, match="per_predicate_R@50"):
        plot_per_predicate_recall(run, run, [1, 2], tmp_path / "x.png", k=50)
    with pytest.raises(InputError, match="ltvrr_report"):
        plot_band_accuracy({}, {}, tmp_path / "y.png")
    assert not list(tmp_path.iterdir())
