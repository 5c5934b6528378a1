"""HML through Ray Train with two DDP workers (fractional CPUs): a worker SIGKILLed mid-stage is replaced and
the resumed stage replays the uninterrupted two-worker run exactly; that uninterrupted run completes both
stages, every stage checkpoint (written by rank 0) holds finite, non-zero Fisher and importance, and the
reported metrics are those of its saved predictions. (One test: each Ray Train run costs ~30 s of worker
start-up on 2 cores, so the uninterrupted run is checked instead of repeated.)"""
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from sgg_stores import write_tiny_store
from test_pipelines_hml import _assert_same_training, _stage_rows

from components.evaluation.predictions import iter_sgg_predictions
from components.evaluation.sgg import evaluate_sgg
from components.hml.checkpoint import load_checkpoint
from pipelines.hml import HMLConfig, run

KEYS = ("R@20", "R@50", "mR@50", "hR@50", "hmR@50", "Mean@50")


@pytest.fixture(scope="module")
def two_shard_store(tmp_path_factory):
    """The tiny planted store with its 24 train images in two parquet shards (one per worker)."""
    return write_tiny_store(tmp_path_factory.mktemp("hml2") / "store", shard_size=12)


@pytest.mark.ray
def test_two_workers_resume_after_a_killed_worker_replays_the_uninterrupted_run(ray_local, two_shard_store,
                                                                                tmp_path):
    """Each rank streams its own fixed part of the train split in a fixed order (PerRankDataConfig), with
    pairs and dropout seeded by (seed, stage, rank, step): after a worker is SIGKILLed at step 3 of stage 1
    and the group restarts from the step-2 checkpoint, per-step losses, final models, Fisher and importance
    equal an uninterrupted two-worker run of the same seed. (Under Ray's streaming_split, which hands blocks
    out in arrival order, a resumed rank could get other rows than the original run.)"""
    cfg = HMLConfig(store=str(two_shard_store), output_dir=str(tmp_path / "out"), methods=["hml"], hidden_dim=8,
                    steps_per_stage=4, checkpoint_every=2, batch_size=4, max_bg_per_image=16, num_workers=2,
                    cpus_per_worker=0.5, max_failures=2, stages=2, stage1_share=None, track=False, progress=False,
                    ks=[20, 50])
    marker = tmp_path / "failed-once"
    run(cfg, loop_extra={"fault_injection": {"at_step": 3, "marker": str(marker)}})
    assert marker.is_file() and 2 in json.loads(marker.read_text())["registered_steps"]
    first = [json.loads(line) for line in (tmp_path / "out" / "stages").glob("hml-stage1*").__next__()
             .joinpath("metrics.jsonl").read_text().splitlines()]
    assert [m["resumed_from"] for m in first] == [0, 0, 2, 2]
    res = run(replace(cfg, output_dir=str(tmp_path / "calm")))
    _assert_same_training(tmp_path / "out", tmp_path / "calm")
    _assert_complete_with_fisher_and_importance(tmp_path / "calm", res)


def _assert_complete_with_fisher_and_importance(out: Path, res: dict) -> None:
    """Both stages ran 4 steps; rank 0's checkpoints hold finite, non-zero F and Omega; the reported metrics
    re-score from the saved predictions."""
    stage_dirs = sorted((out / "stages").glob("hml-stage*"))
    assert [d.name.split("-")[1] for d in stage_dirs] == ["stage1", "stage2"]
    assert [[m["step"] for m in rows] for rows in _stage_rows(out)] == [[1, 2, 3, 4]] * 2
    for d in stage_dirs:
        meta, state = load_checkpoint(d / "final.pt")
        assert meta["step"] == 4 and state["fisher"].keys() == state["importance"].keys()
        for part in ("fisher", "importance"):
            values = torch.cat([v.reshape(-1) for v in state[part].values()])
            assert torch.isfinite(values).all() and (values > 0).any(), (d.name, part)
    preds = list(iter_sgg_predictions(out / "hml" / "predictions"))
    tree = json.loads((out / "tree.json").read_text())["parent"]
    metrics = res["methods"]["hml"]["metrics"]
    again = evaluate_sgg(preds, 50, [20, 50], tree=tree)
    assert len(preds) == 6 and [again[k] for k in KEYS] == [metrics[k] for k in KEYS]
