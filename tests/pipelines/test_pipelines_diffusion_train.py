"""Diffusion training on Ray Train: DDP workers streaming a tiny vrr-planted store, conditions by triplet."""
from __future__ import annotations

import json

import numpy as np
import pytest

from components.data.store import FeatureStore, relation_arrays
from components.diffaug.diffusion import DiffusionConfig, fit_standardizer, load_bundle
from components.diffaug.sampling import sample_features
from components.errors import ConfigError, DataError, InputError
from pipelines.diffusion_train import ConditionTable, streamed_standardizer, train_diffusion_on_ray_train
from pipelines.streaming import dataset_from_store

E, K, STEPS = 6, 4, 12


@pytest.fixture(scope="module")
def store(vrr_store):
    return vrr_store


@pytest.fixture(scope="module")
def train_rows(store):
    return relation_arrays(FeatureStore(store).read("train"))


def _table(rows: dict, store) -> tuple[ConditionTable, np.ndarray]:
    trip = np.unique(np.stack([rows["subject"], rows["predicate"], rows["object"]], 1), axis=0)
    rng = np.random.default_rng(0)
    m = FeatureStore(store).manifest
    return ConditionTable.build(trip, rng.normal(size=(len(trip), E)), None, rng.random((len(trip), K)),
                                len(m.objects), len(m.predicates)), trip


def test_condition_table_finds_each_triplets_row_and_names_a_missing_one(train_rows, store):
    table, trip = _table(train_rows, store)
    picked = trip[[5, 0, len(trip) - 1, 5]]
    rows = table.rows(picked[:, 0], picked[:, 1], picked[:, 2])
    codes = (picked[:, 0] * table.num_predicates + picked[:, 1]) * table.num_objects + picked[:, 2]
    assert np.array_equal(table.codes[rows], codes) and rows[0] == rows[3]
    absent = next((s, p, o) for s in range(table.num_objects) for p in range(table.num_predicates)
                  for o in range(table.num_objects) if not ((trip == (s, p, o)).all(1)).any())
    with pytest.raises(DataError, match=f"triplet \\({absent[0]}, {absent[1]}, {absent[2]}\\)"):
        table.rows(np.array([absent[0]]), np.array([absent[1]]), np.array([absent[2]]))
    with pytest.raises(InputError, match="duplicates"):
        ConditionTable.build(np.concatenate([trip, trip[:1]]), np.zeros((len(trip) + 1, E)), None, None, 200, 60)


def test_streamed_standardizer_matches_the_in_memory_one(store, train_rows, ray_local):
    mean, std = streamed_standardizer(dataset_from_store(store, "train"), batch_size=97)  # many uneven batches
    ref_mean, ref_std = fit_standardizer(train_rows["union_feature"])
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std, ref_std, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def trained(store, train_rows, ray_local, tmp_path_factory):
    table, _ = _table(train_rows, store)
    cfg = DiffusionConfig(steps=STEPS, batch_size=64, hidden=16, layers=1, heads=2, tokens=2, num_inference_steps=3,
                          dtype="float32")
    out = tmp_path_factory.mktemp("ddp")
    return out, cfg, table, train_diffusion_on_ray_train(store, table, cfg, out, num_workers=2, cpus_per_worker=0.5,
                                                         checkpoint_every=5)


def test_two_workers_write_a_bundle_metrics_and_checkpoints(trained, train_rows):
    out, cfg, table, res = trained
    bundle = load_bundle(res["bundle"], expected=cfg)
    ref_mean, ref_std = fit_standardizer(train_rows["union_feature"])
    np.testing.assert_allclose(bundle.mean, ref_mean, rtol=1e-5, atol=1e-6)  # standardised on every row
    np.testing.assert_allclose(bundle.std, ref_std, rtol=1e-5, atol=1e-6)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["workers"] == 2 and metrics["dtype"] == "float32" and metrics["restarts"] == []
    assert len(res["loss"]) == STEPS == len(metrics["loss"]) and np.isfinite(res["loss"]).all()
    kept = [p for p in (out / "ray" / "train").glob("checkpoint_*") if p.is_dir()]
    assert len(kept) == 2  # steps 5, 10, 12 reported; num_to_keep=2
    feats = sample_features(bundle, table.text[:7], None, table.hardness[:7], np.arange(7))
    assert feats.shape == (7, train_rows["union_feature"].shape[1]) and np.isfinite(feats).all()


def test_balanced_minibatches_are_refused_before_any_worker_starts(store, train_rows, tmp_path):
    table, _ = _table(train_rows, store)
    with pytest.raises(ConfigError, match="diffusion.balance"):
        train_diffusion_on_ray_train(store, table, DiffusionConfig(balance=0.5), tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_a_killed_worker_resumes_from_the_last_registered_checkpoint(store, train_rows, ray_local, tmp_path):
    """SIGKILL of rank 0 at step 8 (checkpoints every 5): Ray Train restarts both workers from step 5's
    checkpoint (weights, optimiser, lr schedule, losses) and the run still ends with every step's loss."""
    table, _ = _table(train_rows, store)
    cfg = DiffusionConfig(steps=STEPS, batch_size=64, hidden=16, layers=1, heads=2, tokens=2, dtype="float32")
    marker = tmp_path / "killed"
    res = train_diffusion_on_ray_train(store, table, cfg, tmp_path / "o", num_workers=2, cpus_per_worker=0.5,
                                       checkpoint_every=5, loop_extra={"fault_injection": {"at_step": 8,
                                                                                           "marker": str(marker)}})
    assert json.loads(marker.read_text())["registered_steps"] == [5]
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["restarts"] == [5] and len(res["loss"]) == STEPS and np.isfinite(res["loss"]).all()
    load_bundle(res["bundle"], expected=cfg)
