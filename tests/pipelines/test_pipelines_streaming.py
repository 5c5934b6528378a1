"""Streaming a feature store through Ray Data and Ray Train: every row once, values identical."""
import numpy as np
import pytest
import torch
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from components.data.store import FeatureStore, StoreWriter, relation_arrays, scene_graphs
from components.errors import DataError
from pipelines.streaming import (
    ExactSplitDataConfig,
    PerRankDataConfig,
    dataset_from_store,
    iter_relation_batches,
    iter_scene_graph_batches,
    per_rank_datasets,
)

pytestmark = pytest.mark.ray
OBJ, PRED = ["man", "horse", "hat"], ["on", "has"]


def sg(i):
    rng = np.random.default_rng(i)
    n = 1 + i % 3
    rels = [(0, n - 1, 1 + i % 2)] * (i % 2 if n > 1 else 0)  # a one-object image has no pair to relate
    return {"image_id": f"im{i}", "split": "train", "width": 90 + i, "height": 70, "labels": rng.integers(1, 4, n),
                "boxes": rng.uniform(0, 50, (n, 4)), "obj_features": rng.normal(size=(n, 6)),
                "rels": np.array(rels).reshape(-1, 3), "rel_fine": np.array([r[2] for r in rels], dtype=int)}


def rel(i):
    rng = np.random.default_rng(i)
    return {"sample_id": i, "image_id": f"im{i // 2}", "split": "train", "subject": i % 3, "object": 2, "predicate": i % 2,
                "subject_box": rng.uniform(0, 9, 4), "object_box": rng.uniform(0, 9, 4), "subject_feature": rng.normal(size=6),
                "object_feature": rng.normal(size=6), "union_feature": rng.normal(size=6)}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    w = StoreWriter(root / "sg", "scene_graph", 6, OBJ, PRED)
    for part in (range(7), range(7, 11), range(11, 13)):
        w.write("train", [sg(i) for i in part])
    w.close()
    w = StoreWriter(root / "rel", "relation_sample", 6, OBJ, PRED, dtype="float16")
    w.write("train", [rel(i) for i in range(9)])
    w.write("train", [rel(i) for i in range(9, 14)])
    w.close()
    return root


def test_scene_graphs_stream_once_with_identical_values(ray_local, stores):
    want = {g["image_id"]: g for g in scene_graphs(FeatureStore(stores / "sg").read("train"))}
    got = [g for batch in iter_scene_graph_batches(dataset_from_store(stores / "sg", "train"), 4) for g in batch]
    assert sorted(g["image_id"] for g in got) == sorted(want)
    for g in got:
        w = want[g["image_id"]]
        for k in ("boxes", "labels", "obj_features", "rels", "rel_fine"):
            assert g[k].dtype == w[k].dtype
            np.testing.assert_array_equal(g[k], w[k])
        assert (g["width"], g["height"], g["split"]) == (w["width"], w["height"], w["split"])


def test_relation_batches_are_tensors_with_identical_values(ray_local, stores):
    want = relation_arrays(FeatureStore(stores / "rel").read("train"))
    batches = list(iter_relation_batches(dataset_from_store(stores / "rel", "train"), 4))
    got = {k: torch.cat([b[k] for b in batches]).numpy() for k in batches[0]}
    order = np.argsort(got["sample_id"])
    np.testing.assert_array_equal(got["sample_id"][order], np.arange(14))
    assert got["union_feature"].dtype == np.float32 and got["predicate"].dtype == np.int64
    for k in ("union_feature", "subject_feature", "subject_box", "subject", "predicate"):
        np.testing.assert_array_equal(got[k][order], want[k])


def test_corrupt_shard_is_refused_before_streaming(ray_local, stores, tmp_path):
    import shutil
    shutil.copytree(stores / "sg", tmp_path / "sg")
    shard = tmp_path / "sg" / "train" / "part-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-40])
    with pytest.raises(DataError, match="part-00001.parquet: checksum"):
        dataset_from_store(tmp_path / "sg", "train")


def _fit_count(ds, dataset_config, name, storage):
    """Metrics of a 2-worker Train run of count_shard over `ds` split by `dataset_config`."""
    def count_shard(config):  # nested: pickled by value, so workers need not import this module
        """Train worker: the image ids of this worker's shard in stream order, gathered from all workers."""
        import json
        import tempfile
        from contextlib import redirect_stdout
        from io import StringIO
        from pathlib import Path

        import ray.train
        import torch.distributed as dist
        from ray.experimental.tqdm_ray import RAY_TQDM_MAGIC

        from pipelines.streaming import iter_scene_graph_batches as it

        out = StringIO()  # what the worker prints while streaming, e.g. Ray Data's progress-bar updates
        with redirect_stdout(out):
            ids = [g["image_id"] for b in it(ray.train.get_dataset_shard("train"), config["batch_size"]) for g in b]
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, ids)
        metrics = {"rows_per_worker": [len(x) for x in everyone], "all_ids": sorted(i for x in everyone for i in x),
                   "streams": everyone, "bar_updates": out.getvalue().count(RAY_TQDM_MAGIC)}
        # Train V2 keeps result.metrics only when a checkpoint comes with them: rank 0 attaches a tiny one.
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "rows.json").write_text(json.dumps(metrics))
            rank0 = ray.train.get_context().get_world_rank() == 0
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d) if rank0 else None)

    trainer = TorchTrainer(count_shard, train_loop_config={"batch_size": 3},
                           scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
                           datasets={"train": ds}, dataset_config=dataset_config,
                           run_config=RunConfig(name=name, storage_path=str(storage)))
    return trainer.fit().metrics


def test_train_workers_split_the_store_exactly(ray_local, stores, tmp_path):
    """13 rows on 2 workers: Ray's default (equal) split gives 6 + 6; ExactSplitDataConfig keeps all 13."""
    m = _fit_count(dataset_from_store(stores / "sg", "train"), ExactSplitDataConfig(), "count", tmp_path)
    assert sum(m["rows_per_worker"]) == FeatureStore(stores / "sg").manifest.rows("train") == 13
    assert m["all_ids"] == sorted(f"im{i}" for i in range(13))  # each row exactly once across workers


def test_per_rank_parts_stream_the_same_rows_in_the_same_order_on_every_run(ray_local, stores, tmp_path):
    """PerRankDataConfig: each worker streams its own fixed part (3 shards on 2 workers: shards 0 + 2 and
    shard 1), every row once, in the same order in two separate Train runs (what exact resume needs)."""
    parts = per_rank_datasets(stores / "sg", "train", 2)
    runs = [_fit_count(dataset_from_store(stores / "sg", "train"), PerRankDataConfig({"train": parts}), f"fixed{i}",
                       tmp_path) for i in range(2)]
    assert runs[0]["streams"] == runs[1]["streams"]
    assert runs[0]["all_ids"] == sorted(f"im{i}" for i in range(13))
    assert runs[0]["streams"] == [[f"im{i}" for i in range(7)] + ["im11", "im12"], [f"im{i}" for i in range(7, 11)]]
    assert runs[0]["bar_updates"] == 0  # rank 0 drew no Ray Data progress bar (they outlived the stream on the driver)
    with pytest.raises(ValueError, match="holds 1 parts, expected one per worker"):
        PerRankDataConfig({"train": parts[:1]}).configure({"train": parts[0]}, 2, None, None)


def test_per_rank_parts_with_fewer_shards_than_ranks_split_by_image(ray_local, stores):
    """3 shards on 5 ranks: every rank reads all shards and keeps the images whose id hashes to it."""
    streams = [[g["image_id"] for b in iter_scene_graph_batches(ds, 4) for g in b]
               for ds in per_rank_datasets(stores / "sg", "train", 5)]
    assert sorted(i for s in streams for i in s) == sorted(f"im{i}" for i in range(13))
    assert sum(1 for s in streams if s) >= 3  # spread over ranks, not all on one
    again = [[g["image_id"] for b in iter_scene_graph_batches(ds, 4) for g in b]
             for ds in per_rank_datasets(stores / "sg", "train", 5)]
    assert {tuple(sorted(s)) for s in again} == {tuple(sorted(s)) for s in streams}
