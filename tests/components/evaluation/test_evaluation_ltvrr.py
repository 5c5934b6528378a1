"""LTVRR band accuracy: band edges and assignment, hand-computed per-class means, synonyms, report, errors."""
from __future__ import annotations

import math

import numpy as np
import pytest

from components.errors import DataError, InputError
from components.evaluation.ltvrr import band_edges, ltvrr_report, per_class_accuracy


def test_band_edges_floor_without_float_artifacts():
    assert band_edges(20) == (16, 19)
    assert band_edges(100) == (80, 95)
    assert band_edges(10) == (8, 9)
    assert band_edges(3) == (2, 2)
    assert band_edges(1) == (0, 0)
    with pytest.raises(InputError, match="cutoffs"):
        band_edges(10, (0.9, 0.5))


def test_bands_sorted_by_training_count_with_id_tie_break():
    # 20 classes; class c has count 100 - 5c, except classes 7 and 3 share count 1000 and class 19 is missing
    counts = {c: 100 - 5 * c for c in range(19)}
    counts[7] = counts[3] = 1000
    gt = np.arange(20)
    r = per_class_accuracy(gt, gt, counts)
    band = dict(zip(r["classes"], r["class_band"]))
    # ascending: 19 (missing -> 0), 18, 17, ..., 8, 6, 5, 4, 2, 1, 0, then 3, 7 (tie, by id)
    assert r["classes"][0] == 19 and r["classes"][-2:] == [3, 7]
    assert [c for c in band if band[c] == "many"] == [7]
    assert sorted(c for c in band if band[c] == "medium") == [0, 1, 3]
    assert sum(b == "few" for b in band.values()) == 16
    assert r["class_train_count"][0] == 0


def test_band_means_are_unweighted_over_classes():
    # 10 classes: class 0 has 3 examples (2 correct), classes 1..9 one example each; counts = class id
    gt = np.array([0, 0, 0] + list(range(1, 10)))
    pred = gt.copy()
    pred[2] = 5  # class 0: 2/3 correct
    pred[gt == 9] = 0  # class 9 (many): wrong
    pred[gt == 8] = 1  # class 8 (medium): wrong
    r = per_class_accuracy(gt, pred, {c: c for c in range(10)})
    acc = {0: 200 / 3, 8: 0.0, 9: 0.0}
    few = [acc.get(c, 100.0) for c in range(8)]
    assert r["few"] == pytest.approx(np.mean(few))
    assert r["medium"] == 0.0 and r["many"] == 0.0
    assert r["all"] == pytest.approx((sum(few) + 0 + 0) / 10)
    assert r["per_example"].tolist() == (pred == gt).tolist()


def test_empty_band_is_nan_and_classes_only_in_predictions_are_ignored():
    r = per_class_accuracy(np.array([1, 2, 3]), np.array([1, 2, 99]), {1: 5, 2: 6, 3: 7})
    assert math.isnan(r["medium"])
    assert r["few"] == 100.0 and r["many"] == 0.0
    assert r["classes"] == [1, 2, 3]


def test_synonym_matching():
    gt, pred = np.array([1, 2, 3]), np.array([2, 1, 4])
    syn = {1: "dog.n.01", 2: "dog.n.01", 3: "car.n.01"}  # 4 not listed: only matches itself
    assert per_class_accuracy(gt, pred, {}, synonyms=syn)["per_example"].tolist() == [True, True, False]
    assert per_class_accuracy(gt, pred, {})["per_example"].tolist() == [False, False, False]


def test_report_combines_subject_object_and_relation():
    gt_s, gt_o, gt_r = np.array([0, 1, 2, 3]), np.array([1, 1, 2, 2]), np.array([0, 0, 1, 1])
    pred_s, pred_o, pred_r = np.array([0, 1, 0, 0]), np.array([1, 0, 2, 2]), np.array([0, 1, 1, 1])
    rep = ltvrr_report(gt_s, pred_s, gt_o, pred_o, gt_r, pred_r, {0: 9, 1: 8, 2: 7, 3: 6}, {0: 5, 1: 1})
    s_all = (100 + 100 + 0 + 0) / 4
    o_all = (50 + 100) / 2
    r_all = (50 + 100) / 2
    assert rep["sbj"]["all"] == pytest.approx(s_all) and rep["obj"]["all"] == pytest.approx(o_all)
    assert rep["sbj_obj"]["all"] == pytest.approx((s_all + o_all) / 2)
    assert rep["rel"]["all"] == pytest.approx(r_all)
    assert rep["combined"] == pytest.approx(((s_all + o_all) / 2 + r_all) / 2)
    # relations: 2 classes -> i1 = 1, i2 = 1: class 1 (count 1) few, class 0 (count 5) many
    assert rep["rel"]["few"] == 100.0 and rep["rel"]["many"] == 50.0


def test_bad_inputs_raise():
    with pytest.raises(DataError, match="differ|entries"):
        per_class_accuracy(np.array([1, 2]), np.array([1]), {})
    with pytest.raises(DataError, match="integer"):
        per_class_accuracy(np.array([1.5]), np.array([1]), {})
    with pytest.raises(DataError, match="empty"):
        per_class_accuracy(np.array([], int), np.array([], int), {})
    with pytest.raises(DataError, match="differ in length"):
        ltvrr_report([1], [1], [1, 2], [1, 2], [0], [0], {}, {})
