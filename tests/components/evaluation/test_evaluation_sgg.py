"""SGG recall: hand-computed cases of the community protocol, ng/hierarchy variants, errors, and agreement
with the plain-loop reference of benchmarks.bench_eval on random data."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.bench_eval import max_abs_diff, reference_evaluate, synthetic_image
from components.errors import DataError, InputError
from components.evaluation.sgg import SGGEvaluator, box_iou, evaluate_sgg

A = [0, 0, 9, 9]
B = [20, 20, 29, 29]


def onehot(preds, c, score=0.9):
    """rel_scores rows putting `score` on predicate p (1-based) and the rest on background."""
    rs = np.zeros((len(preds), c + 1))
    for i, p in enumerate(preds):
        rs[i, 0], rs[i, p] = 1 - score, score
    return rs


def image(gt_boxes, gt_labels, gt_rels, pred_boxes, pred_labels, rel_pairs, rel_scores, pred_scores=None):
    pred_scores = np.ones(len(pred_boxes)) if pred_scores is None else pred_scores
    return {"gt_boxes": np.array(gt_boxes, float).reshape(-1, 4), "gt_labels": np.array(gt_labels, int),
            "gt_rels": np.array(gt_rels, int).reshape(-1, 3), "pred_boxes": np.array(pred_boxes, float).reshape(-1, 4),
            "pred_labels": np.array(pred_labels, int), "pred_scores": np.array(pred_scores, float),
            "rel_pairs": np.array(rel_pairs, int).reshape(-1, 2), "rel_scores": np.asarray(rel_scores, float)}


def test_iou_uses_plus_one_pixel_convention():
    # widths 10 (0..9) overlapping on x 5..9: inter 5*10 = 50, union 100 + 100 - 50 = 150
    iou = box_iou(np.array([[0, 0, 9, 9.]]), np.array([[5, 0, 14, 9.], [0, 0, 9, 9.]]))
    assert iou[0, 0] == pytest.approx(1 / 3) and iou[0, 1] == 1.0


def test_duplicate_gt_triplets_count_separately():
    # GT: (A on B) twice and (B has A); one predicted pair "A on B" matches both duplicates -> 2/3
    img = image([A, B], [1, 2], [[0, 1, 3], [0, 1, 3], [1, 0, 2]], [A, B], [1, 2], [[0, 1]], onehot([3], 4))
    r = evaluate_sgg([img], 4, ks=(1, 20))
    assert r["R@1"] == pytest.approx(200 / 3) and r["R@20"] == pytest.approx(200 / 3)
    # per predicate: predicate 3 -> 2/2, predicate 2 -> 0/1; predicates 1, 4 absent -> 0; mR = 100/4
    assert r["per_predicate_R@20"] == pytest.approx([0, 0, 100, 0])
    assert r["mR@20"] == pytest.approx(25.0)
    assert r["Mean@20"] == pytest.approx((200 / 3 + 25) / 2)


def test_match_through_another_box_by_iou_not_index():
    b_shift = [21, 21, 30, 30]  # IoU with B = 81 / 119 = 0.68
    b_far = [25, 25, 34, 34]  # IoU with B = 25 / 175 = 0.14
    gt = {"gt_boxes": [A, B], "gt_labels": [1, 2], "gt_rels": [[0, 1, 1]]}
    hit = image(**gt, pred_boxes=[A, [50, 50, 59, 59], b_shift], pred_labels=[1, 2, 2], rel_pairs=[[0, 2]],
                rel_scores=onehot([1], 2))
    miss = image(**gt, pred_boxes=[A, b_far], pred_labels=[1, 2], rel_pairs=[[0, 1]], rel_scores=onehot([1], 2))
    wrong_label = image(**gt, pred_boxes=[A, B], pred_labels=[1, 3], rel_pairs=[[0, 1]], rel_scores=onehot([1], 2))
    assert evaluate_sgg([hit], 2)["R@20"] == 100.0
    assert evaluate_sgg([miss], 2)["R@20"] == 0.0
    assert evaluate_sgg([wrong_label], 2)["R@20"] == 0.0
    assert evaluate_sgg([hit], 2, iou_threshold=0.7)["R@20"] == 0.0  # 0.68 < 0.7


def test_images_without_gt_are_skipped_and_without_pairs_score_zero():
    # Scene-Graph-Benchmark skips an image only when it has no GT relation; an empty prediction recalls nothing
    good = image([A, B], [1, 2], [[0, 1, 1], [1, 0, 2]], [A, B], [1, 2], [[0, 1]], onehot([1], 2))
    no_gt = image([A, B], [1, 2], [], [A, B], [1, 2], [[0, 1]], onehot([1], 2))
    no_pairs = image([A, B], [1, 2], [[0, 1, 1]], [A, B], [1, 2], [], np.zeros((0, 3)))
    r = evaluate_sgg([no_gt, good, no_pairs], 2)
    assert r["R@20"] == pytest.approx((50.0 + 0.0) / 2)
    assert r["per_predicate_R@20"] == pytest.approx([(100.0 + 0.0) / 2, 0.0])  # predicate 1 in both images
    assert r["predicate_image_counts"] == [2, 1]
    assert (r["num_images"], r["skipped_no_gt"], r["no_pred"]) == (2, 1, 1)
    assert evaluate_sgg([no_pairs], 2)["R@20"] == 0.0
    with pytest.raises(DataError, match="none of 2 images"):
        evaluate_sgg([no_gt, no_gt], 2)


def test_mean_recall_averages_per_image_and_counts_absent_predicates_as_zero():
    # image 1: predicate 1 twice (one hit), predicate 2 once (hit); image 2: predicate 1 once (no hit)
    c = [40, 40, 49, 49]
    img1 = image([A, B, c], [1, 2, 3], [[0, 1, 1], [0, 2, 1], [1, 2, 2]], [A, B, c], [1, 2, 3],
                 [[0, 1], [1, 2]], onehot([1, 2], 5))
    img2 = image([A, c], [1, 3], [[0, 1, 1]], [A, c], [1, 3], [[0, 1]], onehot([4], 5))
    r = evaluate_sgg([img1, img2], 5)
    assert r["R@20"] == pytest.approx(100 * (2 / 3 + 0) / 2)
    assert r["per_predicate_R@20"] == pytest.approx([25.0, 100.0, 0, 0, 0])  # (1/2 + 0)/2, 1/1
    assert r["mR@20"] == pytest.approx(125.0 / 5)
    assert r["predicate_image_counts"] == [2, 1, 0, 0, 0]


def test_triplet_score_is_product_of_predicate_and_box_scores():
    # pair (0,1) predicate score 0.9 but subject score 0.1 -> 0.09; pair (1,2) 0.5 * 1 * 1 ranks first
    c = [40, 40, 49, 49]
    img = image([A, B, c], [1, 2, 3], [[0, 1, 1]], [A, B, c], [1, 2, 3], [[0, 1], [1, 2]],
                [[0.1, 0.9, 0.0], [0.5, 0.0, 0.5]], pred_scores=[0.1, 1.0, 1.0])
    r = evaluate_sgg([img], 2, ks=(1, 2))
    assert r["R@1"] == 0.0 and r["R@2"] == 100.0


def test_no_graph_constraint_ranks_every_predicate_of_a_pair():
    # one pair carries two GT predicates; graph constraint keeps only its argmax (1), ng keeps both cells
    img = image([A, B], [1, 2], [[0, 1, 1], [0, 1, 2]], [A, B], [1, 2], [[0, 1], [1, 0]],
                [[0.1, 0.5, 0.4, 0.0], [0.1, 0.0, 0.0, 0.45]])
    r = evaluate_sgg([img], 3, ks=(1, 2, 3))
    assert (r["R@1"], r["R@2"], r["R@3"]) == (50.0, 50.0, 50.0)
    # ng order: (0,1,p1)=0.5, (1,0,p3)=0.45, (0,1,p2)=0.4
    assert (r["ngR@1"], r["ngR@2"], r["ngR@3"]) == (50.0, 50.0, 100.0)
    assert r["ngmR@3"] == pytest.approx(200 / 3)


def test_no_graph_constraint_ties_keep_row_major_order():
    # all cells 0.25: with K=1 the first cell (pair 0, predicate 1) wins
    img = image([A, B], [1, 2], [[1, 0, 1]], [A, B], [1, 2], [[0, 1], [1, 0]], np.full((2, 3), 0.25))
    assert evaluate_sgg([img], 2, ks=(1, 3))["ngR@1"] == 0.0
    assert evaluate_sgg([img], 2, ks=(1, 3))["ngR@3"] == 100.0  # cells (0,1),(0,2),(1,1)


def test_hierarchy_recall_counts_fine_child_of_gt_coarse_predicate():
    tree = {"3": 1, "1": 1}  # 3 ("parked on") is a child of 1 ("on")
    fine_for_coarse = image([A, B], [1, 2], [[0, 1, 1]], [A, B], [1, 2], [[0, 1]], onehot([3], 3))
    coarse_for_fine = image([A, B], [1, 2], [[0, 1, 3]], [A, B], [1, 2], [[0, 1]], onehot([1], 3))
    r = evaluate_sgg([fine_for_coarse], 3, tree=tree)
    assert r["R@20"] == 0.0 and r["hR@20"] == 100.0 and r["hmR@20"] == pytest.approx(100 / 3)
    r = evaluate_sgg([coarse_for_fine], 3, tree=tree)
    assert r["R@20"] == 0.0 and r["hR@20"] == 0.0
    assert "hR@20" not in evaluate_sgg([fine_for_coarse], 3)


def test_bad_tree_and_arguments_raise():
    with pytest.raises(InputError, match="two-level"):
        SGGEvaluator(3, tree={3: 2, 2: 1})
    with pytest.raises(InputError, match="out of range"):
        SGGEvaluator(3, tree={4: 1})
    with pytest.raises(InputError, match="ks"):
        SGGEvaluator(3, ks=(0, 5))


def test_bad_images_raise_data_error_naming_the_image():
    ok = image([A, B], [1, 2], [[0, 1, 1]], [A, B], [1, 2], [[0, 1]], onehot([1], 2))
    cases = [
        ({k: v for k, v in ok.items() if k != "rel_pairs"}, "missing keys"),
        ({**ok, "rel_scores": np.full((1, 3), np.nan)}, "NaN"),
        ({**ok, "rel_scores": np.ones((1, 4))}, "rel_scores"),
        ({**ok, "rel_pairs": np.array([[0, 5]])}, "out of range"),
        ({**ok, "gt_rels": np.array([[0, 1, 3]])}, "predicate"),
        ({**ok, "pred_scores": np.array([1.0])}, "pred_scores"),
        ({**ok, "rel_scores": -np.ones((1, 3))}, "negative"),
        ({**ok, "pred_boxes": np.array([[9, 0, 0, 9.], B])}, "x2 < x1"),
        ({**ok, "gt_labels": np.array([1.0, 2.0])}, "integer"),
    ]
    for bad, msg in cases:
        with pytest.raises(DataError, match=msg) as e:
            evaluate_sgg([ok, bad], 2)
        assert "image 1" in str(e.value)


def test_evaluator_streams_and_resets():
    imgs = [synthetic_image(i, num_predicates=10, boxes=8) for i in range(6)]
    ev = SGGEvaluator(10)
    for im in imgs:
        ev.process(im)
    first = ev.evaluate()
    ev.reset()
    for im in imgs:
        ev.process(im)
    assert ev.evaluate() == first


@pytest.mark.parametrize("ks,thr", [((20, 50, 100), 0.5), ((1, 5, 7), 0.3)])
def test_matches_plain_loop_reference_on_random_data(ks, thr):
    c = 12
    imgs = [synthetic_image(i, num_predicates=c, boxes=10) for i in range(40)]
    empty = dict(imgs[3], rel_pairs=np.zeros((0, 2), np.int64), rel_scores=np.zeros((0, c + 1)))
    imgs.append(empty)  # GT relations but no predicted pair: recall 0 in both
    tree = {p: (p - 1) // 4 * 4 + 1 for p in range(1, c + 1)}
    ours = evaluate_sgg(iter(imgs), c, ks=ks, iou_threshold=thr, tree=tree)
    assert ours["no_pred"] == 1 and ours["num_images"] + ours["skipped_no_gt"] == 41
    ref = reference_evaluate(imgs, c, ks=ks, iou_threshold=thr, tree=tree)
    assert set(ref) <= set(ours)
    assert max_abs_diff(ours, ref) < 1e-9
    assert 0 < ours[f"R@{ks[-1]}"] < 100 and ours[f"hR@{ks[-1]}"] >= ours[f"R@{ks[-1]}"]
