"""Saved predictions: SGG shard round trip (dtypes, empty images, atomic directory), LTVRR round trip, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.bench_eval import synthetic_image
from components.errors import DataError
from components.evaluation.ltvrr import ltvrr_report
from components.evaluation.predictions import (
    SGGPredictionWriter,
    iter_sgg_predictions,
    load_ltvrr_predictions,
    read_sgg_manifest,
    save_ltvrr_predictions,
)
from components.evaluation.sgg import evaluate_sgg


def _images(n=7, c=6):
    imgs = [synthetic_image(i, num_predicates=c, boxes=6) for i in range(n)]
    if n > 3:  # an image without predicted pairs
        imgs[3] = {**imgs[3], "rel_pairs": np.zeros((0, 2), int), "rel_scores": np.zeros((0, c + 1), np.float32)}
    return imgs


def test_sgg_round_trip_keeps_arrays_and_metrics(tmp_path):
    imgs = _images()
    with SGGPredictionWriter(tmp_path / "preds", images_per_shard=3) as w:
        for im in imgs:
            w.add(im)
    m = read_sgg_manifest(tmp_path / "preds")
    assert m["num_images"] == 7 and m["num_predicates"] == 6 and [s["images"] for s in m["shards"]] == [3, 3, 1]
    back = list(iter_sgg_predictions(tmp_path / "preds"))
    assert len(back) == len(imgs)
    for a, b in zip(imgs, back):
        for k in a:
            assert np.asarray(a[k]).reshape(b[k].shape).tolist() == b[k].tolist(), k
    assert back[0]["rel_scores"].dtype == np.float32 and back[3]["rel_scores"].shape == (0, 7)
    assert evaluate_sgg(back, 6) == evaluate_sgg(imgs, 6)


def test_sgg_writer_is_atomic_and_validates(tmp_path):
    good = _images(2)
    with pytest.raises(DataError, match="image 1: rel_scores.*NaN"), SGGPredictionWriter(tmp_path / "p") as w:
        w.add(good[0])
        w.add({**good[1], "rel_scores": np.full_like(good[1]["rel_scores"], np.nan)})
    assert not (tmp_path / "p").exists() and not list(tmp_path.iterdir())
    w = SGGPredictionWriter(tmp_path / "p")
    with pytest.raises(DataError, match="missing keys"):
        w.add({k: v for k, v in good[0].items() if k != "gt_boxes"})
    with pytest.raises(DataError, match="shape"):
        w.add({**good[0], "gt_boxes": good[0]["gt_boxes"][:, :3]})
    w.add(good[0])
    with pytest.raises(DataError, match="rel_scores"):  # width fixed by the first image with pairs
        w.add({**good[1], "rel_scores": good[1]["rel_scores"][:, :-1]})
    w.abort()
    assert not (tmp_path / "p").exists()


def test_sgg_reader_errors(tmp_path):
    with pytest.raises(DataError, match="no manifest"):
        list(iter_sgg_predictions(tmp_path))
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(DataError, match="not an SGG prediction manifest"):
        read_sgg_manifest(tmp_path)
    with SGGPredictionWriter(tmp_path / "p") as w:
        w.add(_images(1)[0])
    (tmp_path / "p" / "shard-00000.npz").write_bytes(b"truncated")
    with pytest.raises(DataError, match="shard-00000.npz: unreadable"):
        list(iter_sgg_predictions(tmp_path / "p"))


def test_ltvrr_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {f"{p}_{n}": rng.integers(0, 5, 40) for n in ("sbj", "obj", "rel") for p in ("gt", "pred")}
    kw = dict(arrays, obj_train_counts={i: 10 * i for i in range(5)}, rel_train_counts={0: 3, 4: 1},
              synonyms={1: "dog.n.01", 2: "dog.n.01"})
    f = save_ltvrr_predictions(tmp_path / "l.npz", **kw)
    back = load_ltvrr_predictions(f)
    assert back["obj_train_counts"] == kw["obj_train_counts"] and back["synonyms"] == kw["synonyms"]
    assert "rel_synonyms" not in back
    assert all(back[k].tolist() == v.tolist() for k, v in arrays.items())
    np.testing.assert_equal(ltvrr_report(**back), ltvrr_report(**kw))  # NaN (empty band) == NaN


def test_ltvrr_save_load_errors(tmp_path):
    a = np.array([1, 2])
    with pytest.raises(DataError, match="lengths"):
        save_ltvrr_predictions(tmp_path / "x.npz", a, a, a, a, a[:1], a[:1], {}, {})
    with pytest.raises(DataError, match="negative"):
        save_ltvrr_predictions(tmp_path / "x.npz", a, a, a, a, a, a, {1: -1}, {})
    with pytest.raises(DataError, match="integer"):
        save_ltvrr_predictions(tmp_path / "x.npz", a, a + 0.5, a, a, a, a, {}, {})
    assert not list(tmp_path.iterdir())
    with pytest.raises(DataError, match="does not exist"):
        load_ltvrr_predictions(tmp_path / "x.npz")
    np.savez(tmp_path / "y.npz", a=a)
    with pytest.raises(DataError, match="not an LTVRR"):
        load_ltvrr_predictions(tmp_path / "y.npz")
