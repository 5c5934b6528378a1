"""Collation of store batches: Ray's numpy form and Arrow tables give exactly store.scene_graphs' layout."""
import numpy as np
import pytest
import torch
from ray.data.block import BlockAccessor

from components.data.collate import relation_tensors, scene_graph_rows
from components.data.store import FeatureStore, StoreWriter, relation_arrays, scene_graphs
from components.errors import DataError

OBJ, PRED = ["man", "horse", "hat"], ["on", "has"]


def sg(i, n, rels):
    rng = np.random.default_rng(i)
    return {"image_id": f"im{i}", "split": "train", "width": 100 + i, "height": 80, "labels": rng.integers(1, 4, n),
                "boxes": rng.uniform(0, 50, (n, 4)).astype(np.float32), "obj_features": rng.normal(size=(n, 5)),
                "rels": np.array(rels, dtype=np.int64).reshape(-1, 3), "rel_fine": np.array([r[2] for r in rels], dtype=int)}


def rel(i):
    rng = np.random.default_rng(i)
    return {"sample_id": i, "image_id": f"im{i}", "split": "test", "subject": i % 3, "object": (i + 1) % 3, "predicate": i % 2,
                "subject_box": rng.uniform(0, 9, 4), "object_box": rng.uniform(0, 9, 4), "subject_feature": rng.normal(size=5),
                "object_feature": rng.normal(size=5), "union_feature": rng.normal(size=5)}


def table(tmp_path, kind, rows):
    w = StoreWriter(tmp_path / kind, kind, 5, OBJ, PRED)
    w.write("s", rows)
    w.close()
    return FeatureStore(tmp_path / kind).read("s")


def assert_same_graphs(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for k in w:
            if isinstance(w[k], np.ndarray):
                assert g[k].dtype == w[k].dtype and g[k].shape == w[k].shape, k
                np.testing.assert_array_equal(g[k], w[k])
            else:
                assert g[k] == w[k], k


def test_scene_graph_rows_from_numpy_and_arrow(tmp_path):
    t = table(tmp_path, "scene_graph", [sg(0, 3, [(0, 1, 1), (2, 0, 2)]), sg(1, 2, []), sg(2, 2, [(1, 0, 1)])])
    want = list(scene_graphs(t))
    numpy_batch = BlockAccessor.for_block(t).to_batch_format("numpy")
    assert numpy_batch["boxes"].dtype == object  # the ragged form Ray Data yields
    assert_same_graphs(scene_graph_rows(numpy_batch), want)
    assert_same_graphs(scene_graph_rows(t), want)
    assert scene_graph_rows(numpy_batch)[1]["rels"].shape == (0, 3)


def test_scene_graph_rows_carry_detections(tmp_path):
    rng = np.random.default_rng(0)
    rows = [{**sg(i, 2, [(0, 1, 1)]), "det_boxes": rng.uniform(0, 9, (k, 4)), "det_features": rng.normal(size=(k, 5))}
            for i, k in enumerate((3, 0))]
    w = StoreWriter(tmp_path / "det", "scene_graph", 5, OBJ, PRED, detections=True)
    w.write("s", rows)
    w.close()
    t = FeatureStore(tmp_path / "det").read("s")
    want = list(scene_graphs(t))
    assert want[0]["det_features"].shape == (3, 5) and want[1]["det_boxes"].shape == (0, 4)
    assert_same_graphs(scene_graph_rows(BlockAccessor.for_block(t).to_batch_format("numpy")), want)
    assert_same_graphs(scene_graph_rows(t), want)


def test_relation_tensors_from_numpy_and_arrow(tmp_path):
    t = table(tmp_path, "relation_sample", [rel(i) for i in range(4)])
    want = relation_arrays(t)
    for batch in (t, BlockAccessor.for_block(t).to_batch_format("numpy")):
        got = relation_tensors(batch)
        assert got["union_feature"].dtype == torch.float32 and got["union_feature"].shape == (4, 5)
        assert got["predicate"].dtype == torch.int64
        for k in ("subject_box", "subject_feature", "object_feature", "union_feature"):
            np.testing.assert_array_equal(got[k].numpy(), want[k])
        np.testing.assert_array_equal(got["object"].numpy(), [1, 2, 0, 1])


def test_missing_columns_are_named():
    batch = {k: np.zeros((1, 4)) for k in ("subject_box", "object_box", "subject_feature", "object_feature")}
    batch.update({k: np.zeros(1, int) for k in ("sample_id", "subject", "object", "predicate")})
    with pytest.raises(DataError, match=r"missing columns \['union_feature'\]"):
        relation_tensors(batch)
    with pytest.raises(DataError, match="scene-graph batch: missing columns"):
        scene_graph_rows({"image_id": np.array(["a"])})
