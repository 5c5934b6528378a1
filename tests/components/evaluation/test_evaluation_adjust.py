"""Post-hoc logit adjustment: prior from counts, scores / prior ** tau (background kept), one pass per taus."""
from __future__ import annotations

import numpy as np
import pytest
from test_evaluation_sgg import A, B, image

from components.errors import InputError
from components.evaluation.adjust import adjust_scores, evaluate_adjusted, predicate_prior
from components.evaluation.sgg import evaluate_sgg


def test_prior_normalises_counts_and_floors_unseen_predicates():
    assert predicate_prior([6, 3, 0]) == pytest.approx([0.6, 0.3, 0.1])
    for bad in ([], [1, -1], [[1, 2]], [1, np.nan]):
        with pytest.raises(InputError, match="predicate counts"):
            predicate_prior(bad)


def test_scores_are_divided_by_prior_power_and_background_is_kept():
    rs = np.array([[0.2, 0.5, 0.3], [0.5, 0.4, 0.1]])
    prior = np.array([0.8, 0.2])
    np.testing.assert_array_equal(adjust_scores(rs, prior, 0.0), rs)
    np.testing.assert_allclose(adjust_scores(rs, prior, 1.0), [[0.2, 0.625, 1.5], [0.5, 0.5, 0.5]])
    with pytest.raises(InputError, match="tau"):
        adjust_scores(rs, prior, -0.5)
    with pytest.raises(InputError, match="rel_scores"):
        adjust_scores(rs[:, :2], prior, 1.0)


def test_adjustment_trades_head_recall_for_tail_recall():
    """Two images, one GT relation each: a head predicate (1, prior 0.9) and a tail one (2, prior 0.1).
    The model scores the tail pair 0.6 head / 0.3 tail: at tau 0 the tail GT is missed at K=1, at tau 1
    (0.6/0.9 < 0.3/0.1) it is found, while the head pair (0.85/0.9 > 0.05/0.1) stays a hit."""
    head = image([A, B], [1, 2], [[0, 1, 1]], [A, B], [1, 2], [[0, 1]], [[0.1, 0.85, 0.05]])
    tail = image([A, B], [1, 2], [[0, 1, 2]], [A, B], [1, 2], [[0, 1]], [[0.1, 0.6, 0.3]])
    prior = predicate_prior([9, 1])
    rows = dict(evaluate_adjusted([head, tail], prior, [0.0, 1.0], ks=[1]))
    assert rows[0.0]["mR@1"] == pytest.approx(50.0) and rows[1.0]["mR@1"] == pytest.approx(100.0)
    assert rows[1.0]["R@1"] == pytest.approx(100.0)
    assert rows[0.0]["R@1"] == evaluate_sgg([head, tail], 2, ks=[1])["R@1"] == pytest.approx(50.0)
    with pytest.raises(InputError, match="tau"):
        list(evaluate_adjusted([head], prior, []))
