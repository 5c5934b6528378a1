"""HML test-split prediction: the Ray Data actor pool yields exactly what the driver path yields (same images in
store order, same pairs and scores, SGCls/SGDet object labels), and the prediction columns round-trip."""
import numpy as np
import pyarrow as pa
import pytest
import torch
from sgg_stores import store_images, write_tiny_store

from components.config import config_hash
from components.data.store import FeatureStore
from components.hml.checkpoint import save_checkpoint
from components.models.frequency import frequency_bias
from pipelines.hml_predict import (
    build_stage_model,
    load_stage_model,
    predict_images,
    predict_on_ray,
    predict_store,
    predicted_rows,
    prediction_columns,
    shard_plan,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    # 3 test shards, with detections (SGDet; the other modes ignore them)
    return write_tiny_store(tmp_path_factory.mktemp("predict") / "store", shard_size=2, detections=True)


def _checkpoint(store, tmp_path, mode: str):
    """A stage checkpoint of a freshly initialised predictor (random weights: any model will do), its model
    config and frequency-bias file, written as pipelines/hml.py writes them."""
    man = FeatureStore(store).manifest
    model_cfg = {"predictor": "motifs", "num_objects": len(man.objects), "num_predicates": len(man.predicates),
                 "feature_dim": man.feature_dim, "hidden_dim": 8, "mode": mode}
    fb = frequency_bias(iter(store_images(store, "train")), len(man.objects), len(man.predicates))
    fb_path = tmp_path / "freq_bias.npy"
    np.save(fb_path, fb)
    torch.manual_seed(3)
    model = build_stage_model(model_cfg, fb_path)
    path = save_checkpoint(tmp_path / "final.pt", {"model_hash": config_hash({**model_cfg, "freq_bias": True})},
                           {"model": model.state_dict()})
    return path, model_cfg, fb_path


@pytest.mark.parametrize("mode", ["predcls", "sgcls", "sgdet"])
def test_ray_actor_pool_predicts_what_the_driver_predicts(ray_local, store, tmp_path, mode, monkeypatch):
    path, model_cfg, fb_path = _checkpoint(store, tmp_path, mode)
    model = load_stage_model(path, model_cfg, fb_path)
    want = list(predict_store(model, FeatureStore(store), "test", 5, batch_images=2))

    def no_driver_reads(*args, **kwargs):
        raise AssertionError("the driver read a shard: only the actors should")

    monkeypatch.setattr(FeatureStore, "read_shard", no_driver_reads)  # this process only, not the actors
    got = list(predict_on_ray(path, model_cfg, fb_path, store, "test", 5, actors=2, cpus_per_actor=0.5,
                              gpus_per_actor=0.0, batch_images=2))
    assert [g["image_id"] for g, _ in got] == [w["image_id"] for w, _ in want] and len(got) == 5  # limit, order
    # 3 shards (2 + 2 + the 5th image) over 2 actors: both work, and the values are the driver's
    assert len({p["actor"] for _, p in got}) == 2
    for (gi, gp), (wi, wp) in zip(got, want):
        assert set(gp) == set(wp) | {"actor"}
        for k in wp:
            np.testing.assert_array_equal(gp[k], wp[k])
        for k in ("boxes", "labels", "rels", "rel_fine", "det_boxes", "det_features"):
            np.testing.assert_array_equal(gi[k], wi[k])
        objects = len(gi["det_boxes"] if mode == "sgdet" else gi["boxes"])  # SGDet predicts on the detections
        assert gp["pairs"].max() < objects and len(gp["pairs"]) == objects * (objects - 1)
    assert ("obj_labels" in got[0][1]) == (mode != "predcls")
    assert got[0][1]["rel_scores"].shape[1] == model_cfg["num_predicates"] + 1


def test_driver_path_batches_within_shards_and_equals_per_image_prediction(store, tmp_path):
    """Batches never cross a shard, and batching does not change a prediction: per image alone it is the same."""
    path, model_cfg, fb_path = _checkpoint(store, tmp_path, "predcls")
    model = load_stage_model(path, model_cfg, fb_path)
    batched = list(predict_store(model, FeatureStore(store), "test", None, batch_images=8))
    alone = list(predict_images(model, store_images(store, "test"), batch_images=1))
    assert len(batched) == 6 == len(alone)
    for (_, b), (_, a) in zip(batched, alone):
        np.testing.assert_array_equal(b["pairs"], a["pairs"])
        np.testing.assert_allclose(b["rel_scores"], a["rel_scores"], rtol=1e-5, atol=1e-6)


def test_shard_plan_takes_the_first_rows_from_the_manifest(store):
    fs = FeatureStore(store)
    assert shard_plan(fs, "test", None) == [(0, 2), (1, 2), (2, 2)]
    assert shard_plan(fs, "test", 3) == [(0, 2), (1, 1)]
    assert shard_plan(fs, "test", 0) == []


def test_no_image_requested_starts_no_pool(store, tmp_path):
    path, model_cfg, fb_path = _checkpoint(store, tmp_path, "predcls")
    assert list(predict_on_ray(path, model_cfg, fb_path, store, "test", 0, actors=2, cpus_per_actor=0.5,
                               gpus_per_actor=0.0)) == []


def test_a_corrupt_shard_is_the_actors_data_error_raised_in_the_driver(ray_local, store, tmp_path):
    import shutil

    from components.errors import DataError

    path, model_cfg, fb_path = _checkpoint(store, tmp_path, "predcls")
    bad = shutil.copytree(store, tmp_path / "bad")
    entry = FeatureStore(bad).manifest.splits["test"][1]
    shard = bad / entry["path"]
    shard.write_bytes(shard.read_bytes()[:100])  # truncated
    with pytest.raises(DataError, match="checksum") as err:
        list(predict_on_ray(path, model_cfg, fb_path, bad, "test", None, actors=2, cpus_per_actor=0.5,
                            gpus_per_actor=0.0))
    assert type(err.value) is DataError and entry["path"] in str(err.value)  # the store's own error, not Ray's


def test_prediction_columns_round_trip_with_and_without_object_predictions(store):
    table = next(FeatureStore(store).iter_tables("test")).slice(0, 2)
    preds = [{"image_id": "a", "pairs": np.array([[0, 1], [1, 0]]), "rel_scores": np.full((2, 4), 0.25, np.float32)},
             {"image_id": "b", "pairs": np.zeros((0, 2), np.int64), "rel_scores": np.zeros((0, 4), np.float32),
              "obj_labels": np.array([3, 1]), "obj_scores": np.array([0.5, 0.9], np.float32)}]
    out = prediction_columns(table, preds)
    assert out.schema.field("pred_rel_scores").type == pa.list_(pa.float32())
    rows = list(predicted_rows(out, num_predicates=3))
    assert [img["image_id"] for img, _ in rows] == table.column("image_id").to_pylist()
    for (_, got), want in zip(rows, preds):
        assert set(got) - {"image_id"} == set(want) - {"image_id"}
        for k in set(want) - {"image_id"}:
            np.testing.assert_array_equal(got[k], want[k])
            assert got[k].shape == np.asarray(want[k]).shape
