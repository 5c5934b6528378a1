"""HML pipeline: stage plans and label maps; a tiny two-stage run through Ray Train with a SIGKILLed
worker (resumes from its checkpoint and reproduces an uninterrupted run of the same seed), evaluation,
and a rerun that skips the complete stages."""
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from sgg_stores import store_images, write_tiny_store

from components.data.store import FeatureStore, scene_graphs
from components.errors import ConfigError
from components.evaluation.predictions import iter_sgg_predictions
from components.evaluation.sgg import evaluate_sgg
from components.hml.checkpoint import load_checkpoint
from components.models.checkpoint import load_predictor
from components.models.frequency import frequency_bias
from components.taxonomy.tree import build_predicate_tree
from pipelines.hml import (
    HMLConfig,
    StageSpec,
    label_map,
    main,
    methods_at_once,
    run,
    stage_plan,
    stage_steps,
    train_statistics,
)
from pipelines.hml_predict import predict_images


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_tiny_store(tmp_path_factory.mktemp("hml") / "store", shard_size=24)


def _tree():
    vecs = {"on": [1, 0], "has": [0, 1], "sitting on": [0.9, 0.1], "wears": [0.1, 0.9], "eats": [-1, 0]}
    return build_predicate_tree(list(vecs), [50, 40, 5, 4, 1], vecs, threshold=0.7)


def test_stage_plan_budgets_and_label_map():
    cfg = HMLConfig(store="x", steps_per_stage=10, gamma=0.9, lam=2.0, cr_weight=3.0, stage1_share=None)
    tree = _tree()
    hml = stage_plan("hml", tree, cfg)
    assert [(s.stage, s.positives, s.seen, s.cr_weight, s.lam) for s in hml] == [
        (1, [1, 2], [1, 2], 0.0, 0.0), (2, [3, 4, 5], [1, 2, 3, 4, 5], 3.0, 2.0)]
    (ce,), (cb,) = stage_plan("ce", tree, cfg), stage_plan("cb", tree, cfg)
    assert ce.steps == cb.steps == sum(s.steps for s in hml) == 20
    assert ce.gamma == 0.0 and cb.gamma == 0.9 and ce.positives == [1, 2, 3, 4, 5]
    assert label_map(StageSpec("hml", 2, [3, 5], [1, 2, 3, 5], 0.9, 1), 5) == [0, -1, -1, 3, -1, 5]


def test_stage1_share_splits_the_same_budget():
    assert stage_steps(2, 1000, 0.15) == [300, 1700]
    assert stage_steps(3, 10, 0.5) == [15, 7, 8]  # the last stage takes the rounding remainder
    assert stage_steps(3, 10, None) == [10, 10, 10] and stage_steps(1, 10, 0.2) == [10]
    with pytest.raises(ConfigError, match="stage1_share"):
        stage_steps(2, 1, 0.99)
    hml = stage_plan("hml", _tree(), HMLConfig(store="x", steps_per_stage=100, stage1_share=0.25))
    assert [s.steps for s in hml] == [50, 150]
    assert stage_plan("cb", _tree(), HMLConfig(store="x", steps_per_stage=100))[0].steps == 200


def test_train_statistics_match_a_full_read(store):
    fs = FeatureStore(store)
    images = [img for table in fs.iter_tables("train") for img in scene_graphs(table)]
    n_obj, n_pred = len(fs.manifest.objects), len(fs.manifest.predicates)
    counts, fb = train_statistics(fs, use_freq_bias=True)
    want = np.zeros(n_pred + 1, np.int64)
    for img in images:
        np.add.at(want, img["rels"][:, 2], 1)
    np.testing.assert_array_equal(counts, want)
    assert counts.sum() > 0
    np.testing.assert_array_equal(fb, frequency_bias(images, n_obj, n_pred))  # from label columns alone
    assert train_statistics(fs, use_freq_bias=False)[1] is None


def test_cli_reports_bad_config(capsys):
    assert main(["store=", "steps_per_stage=3"]) == 2
    assert "store" in capsys.readouterr().err
    assert main(["store=/nonexistent/store", "stpes_per_stage=3"]) == 2
    assert "steps_per_stage" in capsys.readouterr().err


def _stage_rows(out: Path) -> list[list[dict]]:
    """Per-step metrics of each hml stage under `out`, stage 1 first."""
    return [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
            for d in sorted((out / "stages").glob("hml-stage*"))]


def _assert_same_training(resumed: Path, calm: Path) -> None:
    """Same step counts, per-step losses, final model, Fisher and importance in two runs (see the test)."""
    rows_r, rows_c = _stage_rows(resumed), _stage_rows(calm)
    assert [[m["step"] for m in s] for s in rows_r] == [[m["step"] for m in s] for s in rows_c]
    for stage_r, stage_c in zip(rows_r, rows_c):
        for mr, mc in zip(stage_r, stage_c):
            losses = [k for k in mc if k.startswith(("loss", "weighted_"))]
            assert [mr[k] for k in losses] == [mc[k] for k in losses]
            assert (mr["pairs"], mr["fg_pairs"]) == (mc["pairs"], mc["fg_pairs"])
    stage_dirs = [sorted((out / "stages").glob("hml-stage*")) for out in (resumed, calm)]
    for d_r, d_c in zip(*stage_dirs):
        (_, s_r), (_, s_c) = load_checkpoint(d_r / "final.pt"), load_checkpoint(d_c / "final.pt")
        for part in ("model", "fisher", "importance"):
            assert s_r[part].keys() == s_c[part].keys(), (d_r.name, part)
            assert all(torch.equal(s_r[part][k], s_c[part][k]) for k in s_c[part]), (d_r.name, part)


def test_two_stage_ray_train_resumes_after_worker_failure_and_rerun_skips(ray_local, store, tmp_path):
    """The SIGKILLed stage resumes from its step-2 checkpoint and replays what an uninterrupted run with the
    same seed does: batch k of a stage is the k-th of the shard stream and its pairs and dropout are seeded
    by (seed, stage, rank, k). (Before, the resumed stage re-read the shard from its start with a pair RNG
    seeded by the resume step and restarted dropout: measured losses 3.6% off at steps 3-4, final Fisher
    up to 0.027 off where its largest value is 0.040, normalised importance up to 0.47 off.) Measured now:
    the resumed stage's losses, model, Fisher and importance are bit-identical, and are compared exactly
    (_assert_same_training): the checkpoint holds the tracker's raw sums (squared gradients, path integral)
    and step count, so a resumed tracker continues from the very same values. Equality also needs the Ray
    Data shard to yield the same rows in the same order in both runs (PerRankDataConfig; two workers:
    test_pipelines_hml_ddp.py). R@K and mR@K are 0 at this toy size (4 steps per stage), so the prediction
    scores are the meaningful evaluation check."""
    marker = tmp_path / "failed-once"
    cfg = HMLConfig(store=str(store), output_dir=str(tmp_path / "out"), methods=["hml"], hidden_dim=8,
                    steps_per_stage=4, checkpoint_every=2, batch_size=4, max_bg_per_image=16, num_workers=1,
                    cpus_per_worker=0.5, max_failures=2, stages=2, stage1_share=None, track=False, progress=False,
                    ks=[20, 50])
    res = run(cfg, loop_extra={"fault_injection": {"at_step": 3, "marker": str(marker)}})
    assert marker.is_file()  # the first attempt of stage 1 died at step 3, once its step-2 checkpoint was in
    assert 2 in json.loads(marker.read_text())["registered_steps"]
    stage_dirs = sorted((tmp_path / "out" / "stages").glob("hml-stage*"))
    assert [d.name.split("-")[1] for d in stage_dirs] == ["stage1", "stage2"]
    first = [json.loads(line) for line in (stage_dirs[0] / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in first] == [1, 2, 3, 4]
    assert [m["resumed_from"] for m in first] == [0, 0, 2, 2]  # resumed from the step-2 checkpoint
    second = [json.loads(line) for line in (stage_dirs[1] / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in second] == [1, 2, 3, 4]
    assert all(m["loss_cr"] > 0 and m["loss_mr"] > 0 for m in second)
    assert all("loss_cr" not in m for m in first)
    metrics = res["methods"]["hml"]["metrics"]
    assert metrics["Mean@50"] == pytest.approx((metrics["R@50"] + metrics["mR@50"]) / 2)
    preds = list(iter_sgg_predictions(tmp_path / "out" / "hml" / "predictions"))
    assert len(preds) == 6 and all(p["rel_scores"].shape[1] == 51 for p in preds)
    assert all(np.allclose(p["rel_scores"].sum(1), 1.0, atol=1e-5) for p in preds)
    again_metrics = evaluate_sgg(preds, 50, [20, 50], tree=json.loads((tmp_path / "out" / "tree.json").read_text())["parent"])
    assert again_metrics["R@50"] == metrics["R@50"] and again_metrics["hR@50"] == metrics["hR@50"]
    calm = run(replace(cfg, output_dir=str(tmp_path / "calm")))  # same config and seed, no failure
    _assert_same_training(tmp_path / "out", tmp_path / "calm")
    calm_metrics = {k: v for k, v in calm["methods"]["hml"]["metrics"].items() if isinstance(v, float)}
    assert {k: metrics[k] for k in calm_metrics} == pytest.approx(calm_metrics, rel=1e-6, abs=1e-6)
    calm_preds = list(iter_sgg_predictions(tmp_path / "calm" / "hml" / "predictions"))
    assert len(calm_preds) == len(preds)
    assert all(np.allclose(p["rel_scores"], c["rel_scores"], atol=1e-6) for p, c in zip(preds, calm_preds))
    mtimes = [(d / "final.pt").stat().st_mtime_ns for d in stage_dirs]
    again = run(cfg)  # every stage complete: no training, same checkpoints, same metrics
    assert [(d / "final.pt").stat().st_mtime_ns for d in stage_dirs] == mtimes
    assert again["methods"]["hml"]["metrics"]["R@50"] == metrics["R@50"]


def test_stage_init_previous_starts_from_stage1_and_a_copied_run_stays_cached(ray_local, store, tmp_path,
                                                                             monkeypatch):
    """stage_init=previous: with lr 0 the stage-2 model must end equal to stage 1's (a fresh model would
    differ). Stage cache keys hold contents, not paths: a copied output_dir reruns without training. The
    output_dir is relative, as `make run` gives it (Ray Train workers and the prediction actor of
    predict_actors=1 run in another directory); the actor's saved predictions equal the driver's."""
    import shutil

    monkeypatch.chdir(tmp_path)
    cfg = HMLConfig(store=str(store), output_dir="out", methods=["hml"], hidden_dim=8, lr=0.0,
                    steps_per_stage=2, checkpoint_every=2, batch_size=4, max_bg_per_image=16, stages=2,
                    stage1_share=None, stage_init="previous", track=False, progress=False, ks=[20],
                    predict_actors=1)
    assert run(cfg)["methods"]["hml"]["prediction_actors"] == 1
    stage_dirs = sorted((tmp_path / "out" / "stages").glob("hml-stage*"))
    (_, first), (_, second) = (load_checkpoint(d / "final.pt") for d in stage_dirs)
    assert all(torch.equal(first["model"][k], second["model"][k]) for k in first["model"])
    # model.safetensors describes itself: it reloads (build spec recorded by build_predictor) with the final
    # weights and reproduces the saved predictions
    reloaded = load_predictor(tmp_path / "out" / "hml" / "model.safetensors").eval()
    assert reloaded.build_spec["hidden_dim"] == 8 and reloaded.build_spec["freq_bias"] is True
    assert all(torch.equal(v, second["model"][k]) for k, v in reloaded.state_dict().items())
    saved = list(iter_sgg_predictions(tmp_path / "out" / "hml" / "predictions"))
    again = [p for _, p in predict_images(reloaded, store_images(store, cfg.eval_split, cfg.eval_images))]
    assert len(again) == len(saved) == 6
    assert all(np.allclose(a["rel_scores"], s["rel_scores"], atol=1e-6) for a, s in zip(again, saved))
    copy = Path(shutil.copytree(tmp_path / "out", tmp_path / "copy"))
    shutil.rmtree(copy / "ray")
    shutil.rmtree(tmp_path / "out")  # a moved run: nothing may still point into the original
    mtimes = {d.name: (d / "final.pt").stat().st_mtime_ns for d in (copy / "stages").iterdir()}
    res = run(replace(cfg, output_dir=str(copy)))
    assert {d.name: (d / "final.pt").stat().st_mtime_ns for d in (copy / "stages").iterdir()} == mtimes
    assert not (copy / "ray").exists()  # no TorchTrainer ran
    assert Path(res["methods"]["hml"]["checkpoint"]).is_relative_to(copy.resolve())


def test_sgcls_two_stage_run_predicts_and_scores_object_labels(ray_local, store, tmp_path):
    """mode=sgcls through Ray Train: every stage step logs the object CE; the saved predictions carry the model's
    own object labels and scores (not the GT ones), re-scoring them reproduces the metrics, object accuracy is
    reported, and the saved model reloads as SGCls and predicts the same labels."""
    cfg = HMLConfig(store=str(store), output_dir=str(tmp_path / "out"), methods=["hml"], hidden_dim=8,
                    steps_per_stage=3, checkpoint_every=3, batch_size=4, max_bg_per_image=16, stages=2,
                    stage1_share=None, mode="sgcls", track=False, progress=False, ks=[20])
    res = run(cfg)
    rows = _stage_rows(tmp_path / "out")
    assert len(rows) == 2 and all(m["loss_obj"] > 0 for stage in rows for m in stage)
    metrics = res["methods"]["hml"]["metrics"]
    assert 0.0 <= metrics["object_accuracy"] <= 100.0
    preds = list(iter_sgg_predictions(tmp_path / "out" / "hml" / "predictions"))
    graphs = store_images(store, cfg.eval_split, cfg.eval_images)
    assert len(preds) == len(graphs) == 6
    assert all(0.0 < p["pred_scores"].min() and p["pred_scores"].max() < 1.0 for p in preds)  # softmax maxima
    correct = sum(int((p["pred_labels"] == g["labels"]).sum()) for p, g in zip(preds, graphs))
    assert metrics["object_accuracy"] == pytest.approx(100.0 * correct / sum(len(g["labels"]) for g in graphs))
    _check_rescored_and_reloaded(tmp_path / "out", preds, graphs, metrics, "sgcls")


def _check_rescored_and_reloaded(out: Path, preds: list[dict], graphs: list[dict], metrics: dict, mode: str) -> None:
    """Re-scoring the saved predictions gives the run's metrics; the saved model reloads in `mode` and predicts
    the saved object labels and scores."""
    tree = json.loads((out / "tree.json").read_text())["parent"]
    again = evaluate_sgg(preds, 50, [20], tree=tree)
    assert again["R@20"] == metrics["R@20"] and again["mR@20"] == metrics["mR@20"]
    reloaded = load_predictor(out / "hml" / "model.safetensors").eval()
    assert reloaded.mode == mode
    for (_, p), saved in zip(predict_images(reloaded, graphs), preds):
        np.testing.assert_array_equal(p["obj_labels"], saved["pred_labels"])
        np.testing.assert_allclose(p["obj_scores"], saved["pred_scores"], rtol=1e-6)


def _stage_spans(out: Path) -> dict[str, tuple[float, float]]:
    """(start, end) wall-clock time of each trained stage under `out` (its marker's mtime minus its seconds)."""
    spans = {}
    for done in (out / "stages").glob("*/_DONE.json"):
        end = done.stat().st_mtime
        spans[done.parent.name.rsplit("-", 1)[0]] = (end - json.loads(done.read_text())["seconds"], end)
    return spans


def test_concurrent_methods_overlap_and_train_what_one_at_a_time_trains(ray_local, store, tmp_path):
    """concurrent_methods=2 trains two methods' stages at the same time (their Ray Train runs overlap) and
    gives exactly what training one method after the other gives: the same models and metrics."""
    cfg = HMLConfig(store=str(store), output_dir=str(tmp_path / "both"), methods=["ce", "cb"], hidden_dim=8,
                    steps_per_stage=3, checkpoint_every=3, batch_size=4, max_bg_per_image=16, track=False,
                    progress=False, ks=[20], concurrent_methods=2)
    both = run(cfg)
    spans = _stage_spans(tmp_path / "both")
    assert set(spans) == {"ce-stage1", "cb-stage1"}
    assert max(s for s, _ in spans.values()) < min(e for _, e in spans.values())  # both were training at once
    one = run(replace(cfg, output_dir=str(tmp_path / "one"), concurrent_methods=1))
    one_spans = _stage_spans(tmp_path / "one")
    assert one_spans["ce-stage1"][1] <= one_spans["cb-stage1"][0]  # one after the other
    for method in ("ce", "cb"):
        assert both["methods"][method]["metrics"] == one["methods"][method]["metrics"]
        (_, s_both), (_, s_one) = (load_checkpoint(r["methods"][method]["checkpoint"]) for r in (both, one))
        assert s_both["model"].keys() == s_one["model"].keys()
        assert all(torch.equal(s_both["model"][k], s_one["model"][k]) for k in s_one["model"]), method


def test_methods_at_once_keeps_a_cpu_for_reading(capsys):
    """As many stages as fit beside one CPU for Ray Data's read tasks (which would otherwise wait forever), at
    most concurrent_methods and the number of methods, at least 1; GPUs bound it with use_gpu; a note when
    fewer than asked run at once."""
    cfg = HMLConfig(store="s", cpus_per_worker=0.5, concurrent_methods=3)
    assert methods_at_once(cfg, {"CPU": 2.0}) == 2  # 3 x 0.5 + 1 > 2
    assert "2 method(s) at a time" in capsys.readouterr().out
    assert methods_at_once(cfg, {"CPU": 8.0}) == 3
    assert methods_at_once(replace(cfg, methods=["hml", "ce"]), {"CPU": 8.0}) == 2
    assert methods_at_once(replace(cfg, concurrent_methods=1), {"CPU": 8.0}) == 1
    assert capsys.readouterr().out == ""  # as many as asked (or as there are methods): nothing to say
    assert methods_at_once(replace(cfg, cpus_per_worker=1.0), {"CPU": 2.0}) == 1
    assert methods_at_once(replace(cfg, cpus_per_worker=4.0), {"CPU": 2.0}) == 1  # never 0
    gpus = replace(cfg, use_gpu=True, num_workers=2, cpus_per_worker=1.0)
    assert methods_at_once(gpus, {"CPU": 16.0, "GPU": 4.0}) == 2
    assert methods_at_once(gpus, {"CPU": 16.0}) == 1
    # a method's prediction pool is as wide as its widest moment: 3 actors x 0.5 CPU + 1 leaves room for one
    assert methods_at_once(replace(cfg, predict_actors=3), {"CPU": 3.0}) == 1
    assert methods_at_once(replace(cfg, predict_actors=3), {"CPU": 4.0}) == 2
    assert methods_at_once(replace(gpus, predict_actors=4), {"CPU": 16.0, "GPU": 4.0}) == 1


@pytest.fixture(scope="module")
def det_store(tmp_path_factory):
    return write_tiny_store(tmp_path_factory.mktemp("hml_det") / "store", shard_size=24, detections=True)


def test_sgdet_needs_a_store_with_detections(store, tmp_path):
    """mode=sgdet on a store without detections: one ConfigError naming the store, before any output is written."""
    cfg = HMLConfig(store=str(store), output_dir=str(tmp_path / "out"), mode="sgdet", track=False)
    with pytest.raises(ConfigError, match="holds no detections"):
        run(cfg)
    assert not (tmp_path / "out").exists()


def test_sgdet_two_stage_run_predicts_on_detections(ray_local, det_store, tmp_path):
    """mode=sgdet through Ray Train: the model trains on the detections (object CE with background targets
    logged in every step), its saved predictions put the detections' boxes against the GT boxes, object accuracy
    counts the detections assigned to a GT object, re-scoring the saved predictions reproduces the metrics, and
    the reloaded model predicts the same."""
    from components.data.detections import assign_detections

    cfg = HMLConfig(store=str(det_store), output_dir=str(tmp_path / "out"), methods=["hml"], hidden_dim=8,
                    steps_per_stage=3, checkpoint_every=3, batch_size=4, max_bg_per_image=16, stages=2,
                    stage1_share=None, mode="sgdet", track=False, progress=False, ks=[20])
    metrics = run(cfg)["methods"]["hml"]["metrics"]
    assert all(m["loss_obj"] > 0 for stage in _stage_rows(tmp_path / "out") for m in stage)
    preds = list(iter_sgg_predictions(tmp_path / "out" / "hml" / "predictions"))
    graphs = store_images(det_store, cfg.eval_split, cfg.eval_images)
    assert len(preds) == len(graphs) == 6
    correct = total = 0
    for p, g in zip(preds, graphs):
        np.testing.assert_array_equal(p["pred_boxes"], g["det_boxes"])
        np.testing.assert_array_equal(p["gt_boxes"], g["boxes"])
        assert len(p["pred_labels"]) == len(g["det_boxes"])
        n = len(g["det_boxes"])
        assert p["rel_pairs"].max() < n and len(p["rel_pairs"]) == n * (n - 1)
        match = assign_detections(g["det_boxes"], g["boxes"])
        correct += int((p["pred_labels"][match >= 0] == g["labels"][match[match >= 0]]).sum())
        total += int((match >= 0).sum())
    assert metrics["object_accuracy"] == pytest.approx(100.0 * correct / total)
    _check_rescored_and_reloaded(tmp_path / "out", preds, graphs, metrics, "sgdet")
