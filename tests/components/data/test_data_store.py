"""Feature store: round trip, manifest, and one clear error per kind of bad shard."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.data.store import FeatureStore, StoreWriter, relation_arrays, scene_graphs
from components.errors import DataError

OBJ, PRED = ["man", "horse", "hat"], ["on", "has"]


def sg_row(i, n=3, d=4, rels=((0, 1, 1),)):
    rng = np.random.default_rng(i)
    return {"image_id": str(i), "split": "train", "width": 100, "height": 80,
                "boxes": rng.uniform(0, 50, (n, 4)).astype(np.float32), "labels": np.arange(1, n + 1),
                "obj_features": rng.normal(size=(n, d)), "rels": np.array(rels), "rel_fine": np.array([r[2] for r in rels])}


def rel_row(i, d=4):
    rng = np.random.default_rng(i)
    return {"sample_id": i, "image_id": f"im{i}", "split": "test", "subject": 0, "object": 2, "predicate": 1,
                "subject_box": [0, 0, 1, 1], "object_box": [1, 1, 2, 2], "subject_feature": rng.normal(size=d),
                "object_feature": rng.normal(size=d), "union_feature": rng.normal(size=d)}


def make_store(tmp_path, rows=None, dtype="float32"):
    w = StoreWriter(tmp_path / "s", "scene_graph", 4, OBJ, PRED, dtype=dtype)
    w.write("train", rows or [sg_row(0), sg_row(1)])
    w.write("train", [sg_row(2)])
    w.close()
    return tmp_path / "s"


def test_scene_graph_round_trip(tmp_path):
    root = make_store(tmp_path)
    store = FeatureStore(root)
    assert store.manifest.rows("train") == 3 and store.validate() == {"train": 3}
    got = list(scene_graphs(store.read("train")))
    want = sg_row(1)
    np.testing.assert_allclose(got[1]["obj_features"], want["obj_features"], rtol=1e-6)
    np.testing.assert_array_equal(got[1]["rels"], [[0, 1, 1]])
    assert got[1]["boxes"].shape == (3, 4) and got[2]["image_id"] == "2"
    assert len(store.paths("train")) == 2


def test_relation_round_trip_float16(tmp_path):
    w = StoreWriter(tmp_path / "r", "relation_sample", 4, OBJ, PRED, dtype="float16")
    w.write("test", [rel_row(i) for i in range(5)])
    w.close()
    arr = relation_arrays(FeatureStore(tmp_path / "r").read("test"))
    assert arr["union_feature"].shape == (5, 4) and arr["union_feature"].dtype == np.float32
    np.testing.assert_allclose(arr["union_feature"][3], rel_row(3)["union_feature"], atol=1e-2)
    np.testing.assert_array_equal(arr["sample_id"], np.arange(5))


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.update(obj_features=np.full((3, 4), np.nan)), "NaN or inf"),
    (lambda r: r.update(labels=np.array([1, 2, 9])), "label 9 out of range"),
    (lambda r: r.update(rels=np.array([[0, 7, 1]])), "outside its image"),
    (lambda r: r.update(rels=np.array([[0, 1, 1], [2, 2, 1]]), rel_fine=np.array([1, 1])),
     r"image '0' relates an object to itself .*expected subject != object"),
    (lambda r: r.update(rels=np.array([[0, 1, 5]]), rel_fine=np.array([5])), "out of range"),
])
def test_bad_rows_are_refused(tmp_path, mutate, message):
    row = sg_row(0)
    mutate(row)
    w = StoreWriter(tmp_path / "s", "scene_graph", 4, OBJ, PRED)
    with pytest.raises(DataError, match=message):
        w.write("train", [row])
    assert not list((tmp_path / "s").rglob("*.parquet"))


def test_shard_with_a_self_relation_is_refused_on_read(tmp_path):
    """A shard written before the check (here by hand) is refused when read, before any training step."""
    from components.data.store import sha256_file

    root = make_store(tmp_path)
    shard = root / "train" / "part-00001.parquet"
    t = pq.read_table(shard)
    rels = pa.array([[[1, 1, 2]]], type=t.schema.field("rels").type)
    pq.write_table(t.set_column(t.schema.get_field_index("rels"), "rels", rels), shard)
    m = json.loads((root / "manifest.json").read_text())
    m["splits"]["train"]["files"][1]["sha256"] = sha256_file(shard)
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"part-00001.parquet: column 'rels' of image '2' relates an object to itself"):
        FeatureStore(root).read("train")


def test_wrong_dim_is_refused(tmp_path):
    w = StoreWriter(tmp_path / "s", "scene_graph", 8, OBJ, PRED)
    with pytest.raises((DataError, pa.ArrowInvalid)):
        w.write("train", [sg_row(0, d=4)])


def test_missing_manifest_truncated_and_modified_shards(tmp_path):
    root = make_store(tmp_path)
    shard = root / "train" / "part-00000.parquet"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="part-00000.parquet.*checksum"):
        FeatureStore(root).read("train")
    with pytest.raises(DataError, match="unreadable parquet"):
        FeatureStore(root).read("train", check_sum=False)
    (root / "manifest.json").unlink()
    with pytest.raises(DataError, match="manifest missing"):
        FeatureStore(root)


def test_missing_column_and_unknown_split(tmp_path):
    root = make_store(tmp_path)
    shard = root / "train" / "part-00001.parquet"
    pq.write_table(pq.read_table(shard).drop_columns(["rel_fine"]), shard)
    m = json.loads((root / "manifest.json").read_text())
    from components.data.store import sha256_file
    m["splits"]["train"]["files"][1]["sha256"] = sha256_file(shard)
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"missing columns \['rel_fine'\]"):
        FeatureStore(root).read("train")
    with pytest.raises(DataError, match="split 'test' not in store"):
        FeatureStore(root).paths("test")


def test_null_inside_a_list_is_refused(tmp_path):
    row = sg_row(0)
    row["labels"] = [1, None, 3]  # would read back as NaN and pass every range check
    w = StoreWriter(tmp_path / "s", "scene_graph", 4, OBJ, PRED)
    with pytest.raises(DataError, match=r"null values in columns \['labels'\]"):
        w.write("train", [row])
    assert not list((tmp_path / "s").rglob("*.parquet"))


def test_shard_of_another_schema_is_refused_on_read(tmp_path):
    root = make_store(tmp_path)
    shard = root / "train" / "part-00001.parquet"
    t = pq.read_table(shard)
    t = t.set_column(t.schema.get_field_index("width"), "width", t.column("width").cast(pa.float64()))
    pq.write_table(t, shard)
    with pytest.raises(DataError, match=r"part-00001.parquet.*'width' is double, expected int32"):
        FeatureStore(root).read("train", check_sum=False)


def test_iter_columns_reads_only_the_named_columns(tmp_path):
    root = make_store(tmp_path)
    store = FeatureStore(root)
    pairs = list(store.iter_columns("train", ["image_id", "rels"]))
    assert [p for p, _ in pairs] == [root / e["path"] for e in store.manifest.splits["train"]]
    tables = [t for _, t in pairs]
    assert all(t.column_names == ["image_id", "rels"] for t in tables)
    full = store.read("train")
    assert sum(t.num_rows for t in tables) == full.num_rows
    assert [r for t in tables for r in t.column("rels").to_pylist()] == full.column("rels").to_pylist()
    with pytest.raises(DataError, match="unreadable columns"):
        list(store.iter_columns("train", ["no_such_column"]))
    shard = root / store.manifest.splits["train"][0]["path"]
    pq.write_table(pq.read_table(shard).slice(0, 0), shard)  # a valid parquet file with too few rows
    with pytest.raises(DataError, match="rows as the manifest says"):
        list(store.iter_columns("train", ["rels"], check_sum=False))


def test_predicate_counts_read_the_label_column_only(tmp_path):
    rows = [sg_row(0, rels=((0, 1, 1), (1, 2, 2), (2, 0, 2))), sg_row(1, rels=((0, 2, 2),)), sg_row(2, rels=())]
    root = make_store(tmp_path, rows=rows[:2])  # make_store appends sg_row(2) with one "on" relation
    store = FeatureStore(root)
    counts = store.predicate_counts("train")
    np.testing.assert_array_equal(counts, [0, 2, 3])  # index = 1-based predicate id
    want = np.zeros(3, np.int64)
    for img in scene_graphs(store.read("train")):
        np.add.at(want, img["rels"][:, 2], 1)
    np.testing.assert_array_equal(counts, want)
    w = StoreWriter(tmp_path / "r", "relation_sample", 4, OBJ, PRED)
    w.write("test", [rel_row(i) for i in range(5)])
    w.close()
    np.testing.assert_array_equal(FeatureStore(tmp_path / "r").predicate_counts("test"), [0, 5])  # 0-based
    shard = root / store.manifest.splits["train"][0]["path"]
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(DataError, match="checksum"):
        store.predicate_counts("train")
    with pytest.raises(DataError, match="not in store"):
        store.predicate_counts("val")


def det_row(i, k=2, d=4):
    rng = np.random.default_rng(100 + i)
    return {**sg_row(i, d=d), "det_boxes": rng.uniform(0, 50, (k, 4)).astype(np.float32),
            "det_features": rng.normal(size=(k, d))}


def test_store_with_detections_round_trips_and_checks_them(tmp_path):
    w = StoreWriter(tmp_path / "d", "scene_graph", 4, OBJ, PRED, detections=True)
    w.write("test", [det_row(0), det_row(1, k=0)])
    w.close()
    store = FeatureStore(tmp_path / "d")
    assert store.manifest.detections and json.loads((tmp_path / "d" / "manifest.json").read_text())["detections"]
    got = list(scene_graphs(store.read("test")))
    np.testing.assert_allclose(got[0]["det_features"], det_row(0)["det_features"], rtol=1e-6)
    assert got[0]["det_boxes"].shape == (2, 4) and got[1]["det_boxes"].shape == (0, 4)
    assert got[1]["det_features"].shape == (0, 4)
    assert "det_boxes" not in next(scene_graphs(FeatureStore(make_store(tmp_path)).read("train")))
    w = StoreWriter(tmp_path / "bad", "scene_graph", 4, OBJ, PRED, detections=True)
    with pytest.raises(DataError, match="det_boxes and det_features differ"):
        w.write("test", [{**det_row(0), "det_features": np.zeros((3, 4))}])
    with pytest.raises(DataError, match="det_features.*NaN"):
        w.write("test", [{**det_row(0), "det_features": np.full((2, 4), np.nan)}])
    with pytest.raises(DataError, match="missing field 'det_boxes'"):
        w.write("test", [sg_row(0)])


def test_a_store_without_detections_refuses_a_detection_manifest_of_another_kind(tmp_path):
    w = StoreWriter(tmp_path / "r", "relation_sample", 4, OBJ, PRED)
    w.write("test", [rel_row(0)])
    w.close()
    path = tmp_path / "r" / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "detections": True}))
    with pytest.raises(DataError, match="detections True in a 'relation_sample' store"):
        FeatureStore(tmp_path / "r")
