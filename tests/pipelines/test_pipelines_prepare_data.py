"""prepare_data CLI: both planted stores round-trip through the feature store, deterministically, atomically."""
import json

import numpy as np

from components.data.planted_sgg import PLANTED_PARENTS
from components.data.store import FeatureStore, relation_arrays, scene_graphs
from pipelines.prepare_data import main

SGG_SMALL = ["sgg.n_train=60", "sgg.n_val=10", "sgg.n_test=20", "sgg.shard_size=25"]
VRR_SMALL = ["vrr.n_train=600", "vrr.n_val=60", "vrr.n_test=200", "vrr.shard_size=250"]


def shard_hashes(root):
    m = json.loads((root / "manifest.json").read_text())
    return {s: [f["sha256"] for f in v["files"]] for s, v in m["splits"].items()}


def test_sgg_store_round_trip_and_byte_determinism(tmp_path, capsys):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert main(["--dataset", "sgg-planted", "--out", str(a), "--seed", "4", *SGG_SMALL]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"]["train"]["images"] == 60
    store = FeatureStore(a)
    assert store.validate() == {"train": 60, "val": 10, "test": 20}
    assert len(store.paths("train")) == 3  # 25 + 25 + 10 images
    assert store.manifest.meta["parents"] == PLANTED_PARENTS and store.manifest.feature_dim == 64
    graphs = list(scene_graphs(store.read("test")))
    parent_idx = {i + 1: store.manifest.predicates.index(PLANTED_PARENTS[n]) + 1
                  for i, n in enumerate(store.manifest.predicates)}
    for g in graphs:
        assert all(ann in (fine, parent_idx[fine]) for ann, fine in zip(g["rels"][:, 2], g["rel_fine"]))
    assert main(["--dataset", "sgg-planted", "--out", str(b), "--seed", "4", *SGG_SMALL]) == 0
    assert shard_hashes(a) == shard_hashes(b)
    assert main(["--dataset", "sgg-planted", "--out", str(c), "--seed", "5", *SGG_SMALL]) == 0
    assert shard_hashes(a)["train"] != shard_hashes(c)["train"]


def test_sgg_det_store_is_sgg_planted_plus_detections(tmp_path, capsys):
    """sgg-planted-det: the GT columns equal sgg-planted's byte for byte; each image adds detections; the summary
    gives the share of GT triplets a detection could recall (the detector's calibration target)."""
    plain, det = tmp_path / "sgg", tmp_path / "det"
    assert main(["--dataset", "sgg-planted", "--out", str(plain), *SGG_SMALL]) == 0
    capsys.readouterr()
    assert main(["--dataset", "sgg-planted-det", "--out", str(det), *SGG_SMALL, "det.false_positives=0.25"]) == 0
    train = json.loads(capsys.readouterr().out)["splits"]["train"]
    assert 0.5 < train["triplets_detectable"] <= train["objects_detected"] <= 1.0
    store = FeatureStore(det)
    assert store.manifest.detections and not FeatureStore(plain).manifest.detections
    assert store.manifest.meta["detector"]["false_positives"] == 0.25
    for split in ("train", "test"):
        a, b = store.read(split), FeatureStore(plain).read(split)
        assert a.drop_columns(["det_boxes", "det_features"]).equals(b)
        n_det = np.asarray(a.column("det_boxes").combine_chunks().value_lengths())
        assert (n_det > 0).all()
        if split == "train":
            assert round(float(n_det.mean()), 2) == train["detections_per_image"]


def test_vrr_store_scale_and_replacement(tmp_path, capsys):
    out = tmp_path / "vrr"
    (out / "train").mkdir(parents=True)
    (out / "stale.txt").write_text("old run")
    assert main(["--dataset", "vrr-planted", "--out", str(out), "--scale", "0.5", "dtype=float16", *VRR_SMALL]) == 0
    assert not (out / "stale.txt").exists()  # the directory was swapped in whole
    store = FeatureStore(out)
    assert store.validate() == {"train": 300, "val": 30, "test": 100}
    arr = relation_arrays(store.read("test"))
    assert arr["union_feature"].shape == (100, 128) and store.manifest.dtype == "float16"
    assert arr["predicate"].min() >= 0 and arr["predicate"].max() < len(store.manifest.predicates)
    assert np.unique(arr["predicate"]).size == 50  # every predicate appears in test
    assert not list(tmp_path.glob(".vrr.*"))  # no temp directory left behind
    capsys.readouterr()


def test_bad_input_exits_with_one_clear_message(tmp_path, capsys):
    assert main(["--dataset", "sgg-planted", "--out", str(tmp_path / "x"), "--scale", "0"]) == 2
    assert "sgg.scale" in capsys.readouterr().err
    assert main(["--dataset", "sgg-planted", "--out", str(tmp_path / "x"), "sgg.object_nosie=2"]) == 2
    assert "did you mean 'object_noise'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_yaml_config_with_cli_overrides(tmp_path, capsys):
    cfg = tmp_path / "data.yaml"
    cfg.write_text("sgg:\n  n_train: 30\n  n_val: 5\n  n_test: 8\n  feature_dim: 16\n")
    out = tmp_path / "s"
    assert main(["--dataset", "sgg-planted", "--out", str(out), "--config", str(cfg), "sgg.n_test=12"]) == 0
    store = FeatureStore(out)
    assert store.validate() == {"train": 30, "val": 5, "test": 12} and store.manifest.feature_dim == 16
    assert store.manifest.meta["config"]["n_test"] == 12
    capsys.readouterr()
