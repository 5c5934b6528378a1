"""pipelines/evaluate.py on saved predictions: tables, JSON equal to the library call, tree, bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import subprocess_env

from benchmarks.bench_eval import synthetic_image
from components.evaluation.ltvrr import ltvrr_report
from components.evaluation.predictions import SGGPredictionWriter, save_ltvrr_predictions
from components.evaluation.sgg import evaluate_sgg
from pipelines.evaluate import main

ROOT = Path(__file__).resolve().parents[2]
C = 8


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    imgs = [synthetic_image(i, num_predicates=C, boxes=8) for i in range(12)]
    with SGGPredictionWriter(d / "sgg", images_per_shard=5) as w:
        for im in imgs:
            w.add(im)
    rng = np.random.default_rng(1)
    lt = {f"{p}_{n}": rng.integers(0, 6, 50) for n in ("sbj", "obj", "rel") for p in ("gt", "pred")}
    lt.update(obj_train_counts={i: i * i for i in range(6)}, rel_train_counts={i: 6 - i for i in range(6)})
    save_ltvrr_predictions(d / "lt.npz", **lt)
    (d / "tree.json").write_text(json.dumps({"parent": {str(p): (p - 1) // 4 * 4 + 1 for p in range(1, C + 1)}}))
    return d, imgs, lt


def test_sgg_json_matches_library_and_table_prints(saved, capsys):
    d, imgs, _ = saved
    tree = {p: (p - 1) // 4 * 4 + 1 for p in range(1, C + 1)}
    assert main(["sgg", str(d / "sgg"), "--tree", str(d / "tree.json"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    ref = evaluate_sgg(imgs, C, tree=tree)
    assert out.keys() == ref.keys() and "hR@100" in out
    for k, v in ref.items():
        np.testing.assert_allclose(out[k], v, rtol=1e-12, err_msg=k)
    assert main(["sgg", str(d / "sgg"), "--ks", "5", "10"]) == 0
    text = capsys.readouterr().out
    assert "| K | R | mR | ngR | ngmR | Mean |" in text and "| 10 |" in text and "hR" not in text


def test_ltvrr_table_and_json(saved, capsys):
    d, _, lt = saved
    assert main(["ltvrr", str(d / "lt.npz"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    ref = ltvrr_report(**lt)
    assert out["combined"] == pytest.approx(ref["combined"]) and out["rel"]["few"] == pytest.approx(ref["rel"]["few"])
    assert main(["ltvrr", str(d / "lt.npz")]) == 0
    assert "| S/O |" in capsys.readouterr().out


@pytest.mark.parametrize("args,needle", [
    (["sgg", "{d}/nowhere"], "no manifest"),
    (["sgg", "{d}/sgg", "--tree", "{d}/lt.npz"], "invalid JSON"),
    (["sgg", "{d}/sgg", "--tree", "{d}/missing.json"], "cannot read"),
    (["ltvrr", "{d}/sgg"], "does not exist"),
    (["ltvrr", "{d}/lt.npz", "--tree", "{d}/tree.json"], "only applies to sgg"),
])
def test_bad_input_exits_nonzero_with_message(saved, capsys, args, needle):
    d = saved[0]
    assert main([a.format(d=d) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and needle in err


def test_runs_as_a_script(saved):
    d = saved[0]
    env = subprocess_env()
    ok = subprocess.run([sys.executable, str(ROOT / "pipelines/evaluate.py"), "sgg", str(d / "sgg")],
                        check=False, capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and "| 100 |" in ok.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "pipelines/evaluate.py"), "ltvrr", str(d / "nope.npz")],
                         check=False, capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "error:" in bad.stderr


def test_logit_adjust_rows_match_the_library_and_bad_arguments_exit_2(saved, tmp_path, capsys):
    """--logit-adjust with --prior STORE: tau 0 is the plain evaluation; the prior comes from the store's
    train split; a store of another predicate count, or one flag without the other, is one error line."""
    from components.data.store import StoreWriter
    from components.evaluation.adjust import evaluate_adjusted, predicate_prior

    d, imgs, _ = saved
    objects = [f"o{i}" for i in range(12)]
    counts = np.arange(1, C + 1) ** 2
    w = StoreWriter(tmp_path / "store", "scene_graph", 4, objects, [f"p{i}" for i in range(C)])
    rels = np.array([[0, 1, p] for p in range(1, C + 1) for _ in range(counts[p - 1])])
    w.write("train", [{"image_id": "a", "split": "train", "width": 50, "height": 50, "labels": np.array([1, 2]),
                       "boxes": np.array([[0, 0, 9, 9], [5, 5, 20, 20]], float), "obj_features": np.zeros((2, 4)),
                       "rels": rels, "rel_fine": rels[:, 2]}])
    w.close()
    assert main(["sgg", str(d / "sgg"), "--logit-adjust", "0", "1", "--prior", str(tmp_path / "store"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    ref = dict(evaluate_adjusted(imgs, predicate_prior(counts), [0.0, 1.0]))
    assert out["0.0"]["mR@100"] == pytest.approx(ref[0.0]["mR@100"]) == pytest.approx(evaluate_sgg(imgs, C)["mR@100"])
    assert out["1.0"]["mR@100"] == pytest.approx(ref[1.0]["mR@100"]) and out["1.0"] != out["0.0"]
    assert main(["sgg", str(d / "sgg"), "--logit-adjust", "0.5"]) == 2
    assert "--logit-adjust/--prior" in capsys.readouterr().err
