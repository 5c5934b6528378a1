"""GQA-LT reader on tiny files in the LTVRR format: bbox order, 0-based labels, counts, bad inputs."""
import json

import numpy as np
import pytest

from components.data import gqa_lt
from components.errors import DataError

OBJ = ["man", "horse", "hat", "street"]
PRED = ["on", "wearing", "riding"]


def rel(s, sb, o, ob, p):
    return {"subject": {"category": s, "bbox": sb}, "object": {"category": o, "bbox": ob}, "predicate": p}


TRAIN = {"1.jpg": [rel(0, [10, 50, 20, 40], 1, [30, 90, 0, 100], 2), rel(0, [10, 50, 20, 40], 2, [5, 15, 22, 30], 1)],
         "2.jpg": [rel(1, [0, 10, 0, 10], 3, [5, 50, 0, 60], 0)]}
TEST = {"3.jpg": [rel(2, [1, 2, 3, 4], 0, [5, 6, 7, 8], 1)]}


def write_gqa(root, freqs=True):
    root.mkdir(parents=True, exist_ok=True)
    (root / "objects.json").write_text(json.dumps(OBJ))
    (root / "predicates.json").write_text(json.dumps(PRED))
    (root / "rel_annotations_train.json").write_text(json.dumps(TRAIN))
    (root / "rel_annotations_test.json").write_text(json.dumps(TEST))
    if freqs:
        (root / "gvqa_obj_freqs.json").write_text(json.dumps({"man": 70, "horse": 20, "hat": 9}))
        (root / "gvqa_pred_freqs.json").write_text(json.dumps({"on": 50, "wearing": 30, "riding": 1}))
    return root


def test_round_trip_bbox_order_and_labels(tmp_path):
    samples, vocab = gqa_lt.read_gqa_lt(write_gqa(tmp_path / "g"), "train")
    assert vocab.objects == OBJ and vocab.predicates == PRED
    assert [s["sample_id"] for s in samples] == [0, 1, 2]
    s = samples[0]
    assert (s["image_id"], s["subject"], s["object"], s["predicate"]) == ("1.jpg", 0, 1, 2)
    assert s["subject_box"] == [20, 10, 40, 50]  # [y1, y2, x1, x2] -> [x1, y1, x2, y2]
    assert s["object_box"] == [0, 30, 100, 90]
    assert samples[2]["split"] == "train" and samples[2]["object"] == 3
    np.testing.assert_array_equal(vocab.object_counts, [70, 20, 9, 0])
    np.testing.assert_array_equal(vocab.predicate_counts, [50, 30, 1])
    test, _ = gqa_lt.read_gqa_lt(tmp_path / "g", "test")
    assert test[0]["subject_box"] == [3, 1, 4, 2]


def test_counts_from_train_split_without_freqs_files(tmp_path):
    _, vocab = gqa_lt.read_gqa_lt(write_gqa(tmp_path / "g", freqs=False), "test")
    np.testing.assert_array_equal(vocab.object_counts, [2, 2, 1, 1])  # subjects and objects of train
    np.testing.assert_array_equal(vocab.predicate_counts, [1, 1, 1])
    assert "counted" in vocab.counts_source


def _set(root, name, obj):
    (root / name).write_text(obj if isinstance(obj, str) else json.dumps(obj))


@pytest.mark.parametrize("breaker, message", [
    (lambda r: (r / "rel_annotations_train.json").unlink(), "rel_annotations_train.json: file missing"),
    (lambda r: (r / "objects.json").unlink(), "objects.json: file missing"),
    (lambda r: _set(r, "rel_annotations_train.json", '{"1.jpg": [{"subj'), "corrupt JSON"),
    (lambda r: _set(r, "rel_annotations_train.json", {"1.jpg": [rel(4, [0, 1, 0, 1], 0, [0, 1, 0, 1], 0)]}),
     r"subject.category: label 4 out of range"),
    (lambda r: _set(r, "rel_annotations_train.json", {"1.jpg": [rel(0, [0, 1, 0, 1], 0, [0, 1, 0, 1], 3)]}),
     r"predicate: label 3 out of range"),
    (lambda r: _set(r, "rel_annotations_train.json", {"1.jpg": [rel(0, [5, 1, 0, 1], 0, [0, 1, 0, 1], 0)]}),
     r"y2 < y1"),
    (lambda r: _set(r, "rel_annotations_train.json", {"1.jpg": [{"subject": {"category": 0}}]}), "missing field"),
    (lambda r: _set(r, "gvqa_pred_freqs.json", {"flying": 3}), "'flying' is not in the vocabulary"),
    (lambda r: _set(r, "objects.json", ["man", "man"]), "'man' appears twice"),
])
def test_bad_inputs_give_one_clear_error(tmp_path, breaker, message):
    root = write_gqa(tmp_path / "g")
    breaker(root)
    with pytest.raises(DataError, match=message):
        gqa_lt.read_gqa_lt(root, "train")


def test_missing_dir_and_split(tmp_path):
    with pytest.raises(DataError, match="GQA-LT directory not found"):
        gqa_lt.read_gqa_lt(tmp_path / "none", "train")
    with pytest.raises(DataError, match="rel_annotations_val.json: file missing"):
        gqa_lt.read_gqa_lt(write_gqa(tmp_path / "g"), "val")
