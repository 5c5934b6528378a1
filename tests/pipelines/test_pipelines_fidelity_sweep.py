"""Fidelity sweep over guidance scales on a tiny vrr-planted store and a tiny trained diffusion bundle."""
import json
import shutil

import numpy as np
import pytest

from components.atomic import write_json
from components.config import from_dict, to_dict
from components.diffaug.diffusion import DiffusionConfig, save_bundle, train_denoiser
from components.diffaug.requests import class_feature_pools
from components.errors import InputError
from pipelines.diffaug import (
    DiffAugConfig,
    _Conditions,
    _counts,
    _triplets,
    augmented_triplets,
    load_splits,
    tail_plan,
)
from pipelines.fidelity_sweep import fidelity_sweep, main
from pipelines.prepare_data import PrepareDataConfig, write_store


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """(store dir, bundle path) of a diffusion model trained a few steps on GloVe-roles pooled text."""
    root = tmp_path_factory.mktemp("fid")
    store = root / "store"
    write_store(from_dict(PrepareDataConfig, {"dataset": "vrr-planted", "out": str(store),
                                              "vrr": {"scale": 0.03, "n_test": 4000}}))
    st, train, _ = load_splits(str(store))
    cfg = DiffAugConfig(store=str(store), out=str(root), text_encoder="glove-roles", hardness_k=4)
    trip = np.unique(_triplets(train), axis=0)
    cond = _Conditions(cfg, st.manifest.objects, st.manifest.predicates, trip, np.zeros((0, 3), int), None)
    text, mask, hard = cond.of(_triplets(train))
    dcfg = DiffusionConfig(steps=8, batch_size=32, hidden=16, layers=1, heads=2, tokens=2, num_inference_steps=2)
    path = save_bundle(train_denoiser(train.union_feature, text, mask, hard, dcfg, progress=False),
                       root / "bundle.safetensors")
    return str(store), str(path)


def test_rates_per_guidance_are_probabilities_and_reproducible(bundle):
    store, path = bundle
    a = fidelity_sweep(store, path, [0.0, 2.0], n=60, text_encoder="glove-roles")
    assert [r["guidance"] for r in a["by_guidance"]] == [0.0, 2.0]
    for r in a["by_guidance"]:
        assert 0 <= r["tail"] <= 1 and 0 <= r["test"] <= 1 and r["spread_tail"] > 0 and r["spread_test"] > 0
        assert 0 <= r["copy_tail"] <= 1 and 0 <= r["copy_test"] <= 1
    assert 0 < a["real"]["test"] <= 1 and a["n"] == 60
    assert a["real"]["copy_test"] < 0.1  # held-out real samples are not copies of training samples
    b = fidelity_sweep(store, path, [0.0, 2.0], n=60, text_encoder="glove-roles")
    assert json.dumps(a) == json.dumps(b)  # per-id deterministic sampling, fixed probe and picks


def test_bad_inputs_one_error_and_exit_2(bundle, tmp_path, capsys):
    store, path = bundle
    with pytest.raises(InputError, match="guidance"):
        fidelity_sweep(store, path, [-1.0], text_encoder="glove-roles")
    # MiniLM's 384-d text does not fit a bundle trained on GloVe-roles text: one error line, exit 2, no output
    out = tmp_path / "res.json"
    assert main(["--store", store, "--bundle", path, "--n", "20", "--out", str(out)]) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]  # (MiniLM's load bar too)
    assert len(errors) == 1 and "text" in errors[0]
    assert not out.exists()
    assert main(["--store", store, "--bundle", path, "--n", "20", "--text-encoder", "glove-roles",
                 "--guidance", "1", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["by_guidance"][0]["guidance"] == 1.0


def test_settings_are_the_diffaugment_runs_and_a_mismatch_is_refused(bundle, tmp_path, capsys):
    """The seed fitted the K-means hardness vectors and the text encoder made the conditions the bundle was
    trained on: for a bundle inside a DiffAugment run they are read from the run's results.json (config.seed,
    config.text_encoder); another value is one error, before any work."""
    store, path = bundle
    run = tmp_path / "run"
    (run / "diffusion-0123abcd").mkdir(parents=True)
    in_run = str(shutil.copy(path, run / "diffusion-0123abcd" / "bundle.safetensors"))
    with pytest.raises(InputError, match="seed: not given.*no results.json"):  # an unfinished run records no seed
        fidelity_sweep(store, in_run, [1.0], n=20, text_encoder="glove-roles")
    cfg = DiffAugConfig(store=store, out=str(run), seed=3, text_encoder="glove-roles", hardness_k=4)
    write_json(run / "results.json", {"results": {}, "config": to_dict(cfg)})  # as run_diffaug writes it
    got = fidelity_sweep(store, in_run, [1.0], n=20)  # seed and text encoder read from the run
    assert (got["seed"], got["text_encoder"], got["text_tokens"]) == (3, "glove-roles", False)
    with pytest.raises(InputError, match="text_encoder: minilm, but .* used glove-roles"):
        fidelity_sweep(store, in_run, [1.0], n=20, text_encoder="minilm")
    assert json.dumps(got) == json.dumps(fidelity_sweep(store, path, [1.0], n=20, seed=3, text_encoder="glove-roles"))
    out = tmp_path / "res.json"
    assert main(["--store", store, "--bundle", in_run, "--seed", "0", "--text-encoder", "glove-roles",
                 "--out", str(out)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: seed: 0, but") and "used 3" in errors[0]
    assert not out.exists()


def test_a_bundle_among_shared_artifacts_takes_its_runs_settings_from_run(bundle, tmp_path):
    """full.py's bundles live in a directory shared by its DiffAugment runs, beside no results.json: `run` names
    the run (its results.json lists the bundles it used); a bundle it does not list is refused."""
    store, path = bundle
    shared, run = tmp_path / "artifacts", tmp_path / "run"
    (shared / "diffusion-0123abcd").mkdir(parents=True)
    run.mkdir()
    in_shared = str(shutil.copy(path, shared / "diffusion-0123abcd" / "bundle.safetensors"))
    with pytest.raises(InputError, match="no results.json.*give --run"):
        fidelity_sweep(store, in_shared, [1.0], n=20, text_encoder="glove-roles")
    cfg = DiffAugConfig(store=store, out=str(run), seed=3, text_encoder="glove-roles", hardness_k=4)
    write_json(run / "results.json", {"results": {}, "config": to_dict(cfg),
                                      "artifacts": {"dir": str(shared), "bundles": {"hard": in_shared}}})
    got = fidelity_sweep(store, in_shared, [1.0], n=20, run=str(run))
    assert (got["seed"], got["text_encoder"]) == (3, "glove-roles")
    moved = tmp_path / "moved" / "diffusion-0123abcd"  # the model is known by its directory's content key
    moved.mkdir(parents=True)
    assert fidelity_sweep(store, str(shutil.copy(path, moved / "bundle.safetensors")), [1.0], n=20,
                          run=str(run)) == got
    with pytest.raises(InputError, match="is not a diffusion model of the run"):
        fidelity_sweep(store, path, [1.0], n=20, run=str(run))


def test_tail_requests_are_diffaugments_plan_with_its_augmented_triplets(bundle, tmp_path):
    """The tail set is DiffAugment's own sampling plan (pipelines.diffaug.tail_plan over training + WordNet-
    augmented tail triplets at the run's LCH threshold and synset map), not a plan over training triplets."""
    store, path = bundle
    run = tmp_path / "run"
    (run / "diffusion-0123abcd").mkdir(parents=True)
    in_run = str(shutil.copy(path, run / "diffusion-0123abcd" / "bundle.safetensors"))
    st, train, _ = load_splits(store)
    objects, predicates = st.manifest.objects, st.manifest.predicates
    counts = {}
    for threshold in (2.26, 100.0):  # 100: no two classes are that similar, so nothing is augmented
        cfg = DiffAugConfig(store=store, out=str(run), text_encoder="glove-roles", hardness_k=4,
                            lch_threshold=threshold)
        write_json(run / "results.json", {"results": {}, "config": to_dict(cfg)})
        got = fidelity_sweep(store, in_run, [1.0], n=200)
        obj_counts, rel_counts = _counts(train, len(objects), len(predicates))
        trip = np.unique(_triplets(train), axis=0)
        aug = augmented_triplets(cfg, trip, obj_counts, rel_counts, objects, None)
        aug_trip = np.stack([aug["subject"], aug["predicate"], aug["object"]], axis=1)
        plan = tail_plan(trip, aug_trip, rel_counts, class_feature_pools(train), 200, cfg.seed)
        in_train = {tuple(t) for t in trip.tolist()}
        want = sum(tuple(t) not in in_train for t in zip(plan["subject"], plan["predicate"], plan["object"]))
        assert got["tail_requests"] == len(plan["sample_id"]) and got["tail_requests_augmented"] == want
        counts[threshold] = want
    assert counts[2.26] > 0 and counts[100.0] == 0


def test_a_run_recording_no_plan_settings_gets_the_defaults_it_ran_with(bundle, tmp_path):
    """A results.json written before synsets / clip settings were recorded: those keys take the defaults that
    run had (no error), and the result equals that of a run recording the defaults."""
    store, path = bundle
    run = tmp_path / "run"
    (run / "diffusion-0123abcd").mkdir(parents=True)
    in_run = str(shutil.copy(path, run / "diffusion-0123abcd" / "bundle.safetensors"))
    config = to_dict(DiffAugConfig(store=store, out=str(run), text_encoder="glove-roles", hardness_k=4))
    write_json(run / "results.json", {"results": {}, "config": config})
    full = fidelity_sweep(store, in_run, [1.0], n=20)
    for key in ("synsets", "clip_model", "clip_checkpoint"):
        del config[key]
    write_json(run / "results.json", {"results": {}, "config": config})
    assert json.dumps(fidelity_sweep(store, in_run, [1.0], n=20)) == json.dumps(full)
    with pytest.raises(InputError, match="clip_model: RN50, but"):
        fidelity_sweep(store, in_run, [1.0], n=20, clip_model="RN50")
