"""DiffAugment phase end to end on a tiny vrr-planted store with real Ray, WordNet, GloVe and a tiny diffusion model."""
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from components.config import from_dict
from components.errors import ConfigError
from components.stages import arrays_hash
from pipelines import diffusion, evaluate
from pipelines.diffaug import VARIANTS, DiffAugConfig, main, run_diffaug


@pytest.fixture(scope="module")
def store(vrr_store):
    return vrr_store


@pytest.fixture(scope="module")
def summary(store, tmp_path_factory, ray_local):
    cfg = from_dict(DiffAugConfig, {
        "store": str(store), "out": str(tmp_path_factory.mktemp("run")), "variants": list(VARIANTS),
        "text_encoder": "glove-roles", "text_tokens": True, "hardness_k": 8, "embed_dim": 32, "hidden": 64,
        "train": {"epochs": 3, "batch_size": 128}, "finetune_epochs": 1, "n_generated": 40,
        "diffusion": {"steps": 4, "num_inference_steps": 2, "hidden": 32, "layers": 1, "heads": 2, "tokens": 4,
                      "batch_size": 64},
        "num_actors": 1, "cpus_per_actor": 0.25, "shard_size": 16})
    return cfg, run_diffaug(cfg, progress=False)


def test_every_variant_reported(summary):
    _, s = summary
    assert list(s["results"]) == list(VARIANTS)
    for rep in s["results"].values():
        assert set(rep["rel"]) == {"many", "medium", "few", "all"}
        assert rep["combined"] == pytest.approx((rep["rel"]["all"] + rep["sbj_obj"]["all"]) / 2)
        assert 0 <= rep["rel"]["all"] <= 100
    assert s["n_generated"] == 40 and sum(s["plan_bands"].values()) == 40
    assert s["augmentation"]["new_triplets"] == sum(s["augmentation"]["by_rule"].values()) > 0
    for name in ("diffaug_random", "diffaug_so", "diffaug_so_nohardness"):
        f = s["fidelity"][name]["probe"]
        assert f["n_generated"] == 40 and 0 <= f["generated_rate"] <= 1 and 0 < f["real_rate"] <= 1
        assert 0 < s["fidelity"][name]["spread"] < 10
    steps = {"triplet augmentation and conditions", "baseline classifier (waited for)", "fidelity probe",
             "diffusion training", "diffusion training (no hardness)", "fine-tuning (waited for) and scoring"}
    steps |= {f"{what} {name}" for what in ("sampling", "fidelity")
              for name in ("diffaug_random", "diffaug_so", "diffaug_so_nohardness")}
    assert set(s["seconds"]) == steps and all(v >= 0 for v in s["seconds"].values())  # where the phase's time went


def test_outputs_written_and_table(summary):
    cfg, s = summary
    out = Path(cfg.out)
    for name in ("results.json", "results.txt", "bands.png", "projection.png", "diffusion_loss.png", "baseline_ce.pt"):
        assert (out / name).is_file(), name
    assert json.loads((out / "results.json").read_text())["results"].keys() == s["results"].keys()
    for variant, rep in s["results"].items():  # saved test predictions re-score to the reported numbers
        rescored = evaluate.ltvrr_report(**evaluate.load_ltvrr_predictions(out / "predictions" / f"{variant}.npz"))
        assert rescored["combined"] == pytest.approx(rep["combined"]) and rescored["rel"] == pytest.approx(rep["rel"], nan_ok=True)
    assert s["table"].splitlines()[2].startswith("baseline_ce")


def test_diffusion_losses_are_logged_to_mlflow_as_window_means(summary):
    """Each diffusion model's per-step loss reaches the phase's MLflow run as 20-step means (4 steps: one
    point, at step 4, the mean of the four losses in its bundle's metrics.json)."""
    from mlflow import MlflowClient

    cfg, s = summary
    client = MlflowClient(f"sqlite:///{Path(cfg.out) / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name(cfg.experiment).experiment_id],
                                f"attributes.run_name = 'diffaug-{Path(cfg.out).name}'")
    for name, bundle in s["artifacts"]["bundles"].items():
        losses = json.loads((Path(bundle).parent / "metrics.json").read_text())["loss"]
        (point,) = client.get_metric_history(run.info.run_id, f"diffusion_loss_{name}")
        assert point.step == 4 and point.value == pytest.approx(sum(losses) / 4)


def test_rerun_reuses_artifacts_and_reproduces(summary, monkeypatch, tmp_path):
    """A rerun on a copy of the run directory (the module's run stays as the other tests read it) trains no
    diffusion model and samples no shard again, and reproduces the numbers."""
    first, s = summary
    copy = shutil.copytree(first.out, tmp_path / "rerun")
    cfg = replace(first, out=str(copy), variants=["baseline_ce", "diffaug_so"])
    bundles = {p: p.stat().st_mtime_ns for p in Path(cfg.out).glob("diffusion-*/bundle.safetensors")}
    rehashed: list[int] = []  # the request is hashed once, by _sample, which hands the hash to sample_on_ray
    monkeypatch.setattr(diffusion, "arrays_hash", lambda arrays: rehashed.append(1) or arrays_hash(arrays))
    again = run_diffaug(cfg, progress=False)
    assert rehashed == []
    assert bundles and {p: p.stat().st_mtime_ns for p in bundles} == bundles
    (samples,) = Path(cfg.out).glob("samples-diffaug_so-*")
    manifest = json.loads((samples / "manifest.json").read_text())
    assert manifest["skipped_shards"] == len(manifest["shards"]) > 0
    assert manifest["params"]["batch_size"] == cfg.sample_batch_size == 256  # the config's, not the function's
    for v in cfg.variants:
        assert again["results"][v] == s["results"][v]  # same seed, cached bundle and shards -> same numbers
    assert json.dumps(again["fidelity"]["diffaug_so"]) == json.dumps(s["fidelity"]["diffaug_so"])  # NaN-safe


def test_runs_sharing_an_artifacts_dir_reuse_diffusion_samples_and_caches(store, tmp_path, ray_local):
    """Two runs into different `out` dirs sharing `artifacts_dir`, the second with another fine-tuning setting:
    it trains no diffusion model, samples no shard and computes no text embedding or WordNet similarity again;
    nothing of the kind is written into either `out`."""
    shared = tmp_path / "artifacts"
    base = {"store": str(store), "artifacts_dir": str(shared), "variants": ["baseline_ce", "diffaug_so"],
            "text_encoder": "glove-roles", "hardness_k": 8, "embed_dim": 32, "hidden": 64,
            "train": {"epochs": 2, "batch_size": 128}, "finetune_epochs": 1, "n_generated": 40, "plots": False,
            "diffusion": {"steps": 4, "num_inference_steps": 2, "hidden": 32, "layers": 1, "heads": 2, "tokens": 4,
                          "batch_size": 64},
            "num_actors": 1, "cpus_per_actor": 0.25, "shard_size": 16}
    first = run_diffaug(from_dict(DiffAugConfig, {**base, "out": str(tmp_path / "a")}), progress=False)
    rewritten = {"manifest.json", "request.json"}  # a sampling call's bookkeeping, written on every call
    made = {p: p.stat().st_mtime_ns for p in shared.rglob("*") if p.is_file() and p.name not in rewritten}
    assert {p.parent.name.split("-")[0] for p in made if p.name == "bundle.safetensors"} == {"diffusion"}
    assert any(p.name.startswith("lch_cache-") for p in made) and any(p.parent.name == "text_cache" for p in made)
    again = run_diffaug(from_dict(DiffAugConfig, {**base, "out": str(tmp_path / "b"), "finetune_epochs": 2}),
                        progress=False)
    assert {p: p.stat().st_mtime_ns for p in made} == made  # bundle, shards, caches: none written again
    assert not [p for p in shared.rglob("*") if p.is_file() and p.name not in rewritten and p not in made]
    (samples,) = shared.glob("samples-diffaug_so-*")
    manifest = json.loads((samples / "manifest.json").read_text())
    assert manifest["skipped_shards"] == len(manifest["shards"]) > 0
    for out in (tmp_path / "a", tmp_path / "b"):
        assert not list(out.glob("diffusion-*")) and not list(out.glob("samples-*")) and not (out / "text_cache").exists()
    assert again["results"]["baseline_ce"] == first["results"]["baseline_ce"]
    assert again["artifacts"] == first["artifacts"] and set(first["artifacts"]["bundles"]) == {"hard"}
    assert Path(first["artifacts"]["bundles"]["hard"]).parent.parent == shared  # results.json says where they are


def test_config_and_cli_errors(store, tmp_path):
    with pytest.raises(ConfigError):
        from_dict(DiffAugConfig, {"store": str(store), "out": str(tmp_path), "variants": ["nope"]})
    with pytest.raises(ConfigError):
        from_dict(DiffAugConfig, {"store": str(store), "out": str(tmp_path), "text_encoder": "openclip"})
    with pytest.raises(ConfigError, match="diffusion.balance: 0.5 with diffusion_workers=2"):
        from_dict(DiffAugConfig, {"store": str(store), "out": str(tmp_path), "diffusion_workers": 2,
                                  "diffusion": {"balance": 0.5}})
    assert main(["--store", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2


def test_actor_requests_beyond_the_cluster_fail_on_a_local_ray_and_warn_on_a_joined_one(capsys):
    """A local Ray cannot grow, so a request larger than it would queue forever: an error naming the keys. A
    joined cluster may have an autoscaler: a warning only. GPUs count like CPUs (one set per actor)."""
    from components.errors import ConfigError
    from pipelines.diffaug import DiffAugConfig, check_actor_requests

    fits, pool = DiffAugConfig(num_actors=2, cpus_per_actor=1.0), DiffAugConfig(num_actors=3, cpus_per_actor=1.0)
    check_actor_requests(fits, {"CPU": 2.0}, fixed=True)
    with pytest.raises(ConfigError, match=r"sampler pool \(num_actors x cpus_per_actor\) asks 3 CPUs"):
        check_actor_requests(pool, {"CPU": 2.0}, fixed=True)
    gpus = DiffAugConfig(num_actors=2, cpus_per_actor=0.5, gpus_per_actor=0.5)
    check_actor_requests(gpus, {"CPU": 2.0, "GPU": 1.0}, fixed=True)
    with pytest.raises(ConfigError, match=r"^cpus_per_actor / gpus_per_actor / num_actors: a classifier training "
                                          r"task \(cpus_per_actor\) asks 0.5 GPUs; the local Ray has 0"):
        check_actor_requests(gpus, {"CPU": 2.0}, fixed=True)
    check_actor_requests(pool, {"CPU": 2.0}, fixed=True, sampling=False)  # baselines only: no pool, no actor
    with pytest.raises(ConfigError, match=r"a classifier training task \(cpus_per_actor\) asks 3 CPUs"):
        check_actor_requests(DiffAugConfig(cpus_per_actor=3.0), {"CPU": 2.0}, fixed=True, sampling=False)
    workers = DiffAugConfig(num_actors=1, cpus_per_actor=0.5, diffusion_workers=2)  # 2 x 0.5 + 1 for Ray Data
    check_actor_requests(workers, {"CPU": 2.0}, fixed=True)
    with pytest.raises(ConfigError, match=r"diffusion Ray Train workers .* asks 3 CPUs"):
        check_actor_requests(DiffAugConfig(num_actors=1, cpus_per_actor=0.5, diffusion_workers=4), {"CPU": 2.0},
                             fixed=True)
    assert capsys.readouterr().err == ""
    check_actor_requests(pool, {"CPU": 2.0}, fixed=False)
    assert capsys.readouterr().err.startswith("warning: the sampler pool")


def test_fidelity_probe_stops_at_its_cap_with_one_line_not_sklearns_warning(capsys):
    """The probe is 300 lbfgs iterations of logistic regression; where that does not converge (noisy, weakly
    regularised data) sklearn's ConvergenceWarning is replaced by one printed line and the scores are those of
    the same capped fit."""
    import warnings

    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from components.diffaug.finetune import RelationSet
    from pipelines.diffaug import PROBE_ITERATIONS, _probe

    rng = np.random.default_rng(0)
    n, d = 600, 40
    x = (rng.normal(size=(n, d)) * rng.uniform(0.1, 1000, d)).astype(np.float32)  # badly scaled: lbfgs needs long
    p = rng.integers(0, 5, n)
    train = RelationSet(x, x, x, p, p, p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning escaping the probe fails the test
        scores = _probe(train, 7, seed=0)
    assert f"{PROBE_ITERATIONS}-iteration cap" in capsys.readouterr().out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = LogisticRegression(max_iter=PROBE_ITERATIONS, C=1.0, random_state=0).fit(x, p)
    assert int(ref.n_iter_.max()) == PROBE_ITERATIONS  # the premise: this fit stops at the cap
    got = scores(x[:10])
    assert got.shape == (10, 7) and np.isinf(got[:, 5:]).all()
    np.testing.assert_allclose(got[:, :5], ref.decision_function(x[:10]), rtol=1e-6)


def test_diffusion_trained_on_ray_train_workers_feeds_the_phase(store, tmp_path, ray_local):
    """diffusion_workers=2: the bundle comes from two DDP workers streaming the store (their metrics say so), is
    keyed apart from the single actor's, and its samples fine-tune a variant that is scored like any other."""
    cfg = from_dict(DiffAugConfig, {
        "store": str(store), "out": str(tmp_path / "run"), "variants": ["baseline_ce", "diffaug_so"],
        "text_encoder": "glove-roles", "hardness_k": 8, "embed_dim": 32, "hidden": 64, "plots": False,
        "train": {"epochs": 1, "batch_size": 128}, "finetune_epochs": 1, "n_generated": 40,
        "diffusion": {"steps": 6, "num_inference_steps": 2, "hidden": 32, "layers": 1, "heads": 2, "tokens": 4,
                      "batch_size": 64},
        "num_actors": 1, "cpus_per_actor": 0.5, "shard_size": 16, "diffusion_workers": 2})
    out = run_diffaug(cfg, progress=False)
    bundle = Path(out["artifacts"]["bundles"]["hard"])
    metrics = json.loads((bundle.parent / "metrics.json").read_text())
    assert metrics["workers"] == 2 and len(metrics["loss"]) == 6
    assert [p for p in (bundle.parent / "ray" / "train").glob("checkpoint_*") if p.is_dir()]
    assert 0.0 <= out["results"]["diffaug_so"]["rel"]["all"] <= 100.0 and out["fidelity"]["diffaug_so"]["probe"]["n_generated"] == 40
