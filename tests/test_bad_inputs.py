"""Bad inputs end to end, through the real command-line entry points.

Each case writes one malformed input in its real format (VG-150 h5/json, GQA-LT json, a feature store
of parquet shards written by prepare_data's code then corrupted, configs, checkpoints) into its own
directory, runs the CLI as a subprocess and checks the contract of components/errors.py: a non-zero
exit, exactly one `error: ...` line on stderr naming the input and what was expected (no traceback),
and nothing written or changed on disk (no half-written output, pre-existing good outputs untouched).
Cases whose check sits behind Ray training on the CLI path (checkpoints of another model or config)
call the component through the same exit path (pipelines/cli.exit_code) in-process: ids `component-*`.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import subprocess_env

from components.config import from_dict
from components.data.store import MANIFEST, sha256_file
from pipelines.cli import exit_code
from pipelines.prepare_data import PrepareDataConfig, write_store

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "components" / "data"))
from test_data_gqa import rel, write_gqa
from test_data_vg150 import write_vg

SGG_TINY = {"n_train": 30, "n_val": 5, "n_test": 10, "shard_size": 20, "feature_dim": 8}
VRR_TINY = {"n_train": 200, "n_val": 20, "n_test": 60, "shard_size": 100, "feature_dim": 64}
# A run is a command line (script under pipelines/ + arguments) or, for component-* cases, a callable.
Run = list[str] | Callable[[], object]


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """One tiny sgg-planted and one tiny vrr-planted store per module (copied into each case)."""
    base = tmp_path_factory.mktemp("stores")
    for name, key, small in (("sgg", "sgg-planted", SGG_TINY), ("vrr", "vrr-planted", VRR_TINY)):
        write_store(from_dict(PrepareDataConfig, {"dataset": key, "out": str(base / name), key[:3]: small}))
    return {"sgg": base / "sgg", "vrr": base / "vrr"}


# ------------------------------------------------------------------------------------ input builders
def copy_store(stores: dict[str, Path], d: Path, kind: str = "sgg") -> Path:
    """A private copy of a prepared store inside the case directory."""
    return Path(shutil.copytree(stores[kind], d / f"{kind}_store"))


def edit_manifest(store: Path, change: Callable[[dict], None]) -> None:
    """Change the store's manifest.json in place."""
    m = json.loads((store / MANIFEST).read_text())
    change(m)
    (store / MANIFEST).write_text(json.dumps(m))


def rewrite_shard(store: Path, change: Callable[[pa.Table], pa.Table]) -> None:
    """Replace the first train shard by `change(shard)` and record its new sha256 and rows in the manifest, so
    only the content check (not the checksum) can catch it."""
    entry = json.loads((store / MANIFEST).read_text())["splits"]["train"]["files"][0]
    path = store / entry["path"]
    table = change(pq.read_table(path))
    pq.write_table(table, path)

    def fix(m: dict) -> None:
        m["splits"]["train"]["files"][0].update(rows=table.num_rows, sha256=sha256_file(path))

    edit_manifest(store, fix)


def edit_features(table: pa.Table, fn: Callable[[list], list], dim: int) -> pa.Table:
    """`obj_features` rebuilt from `fn(python lists)` with `dim`-d vectors."""
    col = fn(table.column("obj_features").to_pylist())
    arr = pa.array(col, type=pa.list_(pa.list_(pa.float32(), dim)))
    return table.set_column(table.schema.get_field_index("obj_features"), "obj_features", arr)


def with_nan(feats: list) -> list:
    feats[0][0][0] = math.nan
    return feats


def label_999(table: pa.Table) -> pa.Table:
    labels = table.column("labels").to_pylist()
    labels[0][0] = 999
    return table.set_column(table.schema.get_field_index("labels"), "labels", pa.array(labels, pa.list_(pa.int32())))


def edit_h5(root: Path, key: str, value: np.ndarray | None) -> None:
    """Delete (value None) or replace one dataset of the VG-150 h5."""
    with h5py.File(root / "VG-SGG-with-attri.h5", "a") as f:
        del f[key]
        if value is not None:
            f[key] = value


def vg(d: Path, breaker: Callable[[Path], object]) -> Path:
    root = write_vg(d / "vg")
    breaker(root)
    return root


def png(d: Path) -> Path:
    """A pre-existing good output that a failing run must leave untouched."""
    p = d / "tail.png"
    p.write_bytes(b"\x89PNG previous good plot")
    return p


def check_vg(d: Path, breaker: Callable[[Path], object], *extra: str) -> Run:
    return ["check_data.py", str(vg(d, breaker)), "--num-val", "1", "--plot", str(png(d)), *extra]


def gqa_with_train(d: Path, train: object) -> Path:
    root = write_gqa(d / "gqa")
    (root / "rel_annotations_train.json").write_text(json.dumps(train))
    return root


def good_output_dir(d: Path) -> Path:
    """A run directory holding results of an earlier, good run."""
    out = d / "out"
    out.mkdir()
    (out / "results.json").write_text('{"earlier": "good run"}\n')
    return out


def glove_without_predicates(d: Path) -> Path:
    """A GloVe text file (no header) that knows only two of the 50 VG predicate words."""
    p = d / "tiny_glove.txt"
    p.write_text("on 0.1 0.2 0.3\nhas 0.3 0.2 0.1\n")
    return p


def not_a_dir(d: Path) -> Path:
    """A regular file standing where an output directory's parent should be (unwritable even for root)."""
    p = d / "occupied"
    p.write_text("a file, not a directory\n")
    return p


def hml_checkpoint_of_another_model(d: Path) -> Run:
    from components.hml.checkpoint import load_checkpoint, save_checkpoint

    path = save_checkpoint(d / "final.pt", {"model_hash": "aaaa", "stage": 1}, {"model": {"w": torch.zeros(2)}})
    return lambda: load_checkpoint(path, expect={"model_hash": "bbbb", "stage": 1})


def hml_checkpoint_with_pickled_object(d: Path) -> Run:
    from components.hml.checkpoint import FORMAT, load_checkpoint

    path = d / "final.pt"
    torch.save({"format": FORMAT, "meta": {}, "state": {"opt": argparse.Namespace(lr=1)}}, path)
    return lambda: load_checkpoint(path)


def predictor_of_another_config(d: Path) -> Run:
    from components.models.checkpoint import load_predictor, save_predictor
    from components.models.registry import build_predictor

    spec = {"name": "mlp", "num_objects": 3, "num_predicates": 2, "feature_dim": 4, "hidden_dim": 8}
    model = build_predictor(**spec)
    model.build_spec = {**spec, "freq_bias": False}
    path = save_predictor(model, d / "model.safetensors")
    return lambda: load_predictor(path, expected={**spec, "hidden_dim": 16, "freq_bias": False})


# ------------------------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    """One malformed input: how to build it and run the CLI, and what the one error line must say."""

    id: str
    build: Callable[[Path, dict[str, Path]], Run]
    expect: tuple[str, ...]


def prepare(d: Path, *args: str) -> Run:
    return ["prepare_data.py", "--dataset", "sgg-planted", *args,
            *(f"sgg.{k}={v}" for k, v in SGG_TINY.items())]


CASES = [
    # config typos, wrong types, out-of-range values, unwritable output (prepare_data, hml, full)
    Case("prepare-unknown-key-suggests", lambda d, s: prepare(d, "--out", str(d / "out"), "sgg.object_nosie=2"),
         ("sgg.object_nosie: unknown config key; did you mean 'object_noise'?",)),
    Case("prepare-out-of-range-keeps-existing-store",
         lambda d, s: prepare(d, "--out", str(copy_store(s, d)), "--scale", "0"),
         ("sgg.scale: value 0.0 is out of range", "expected a value in")),
    Case("prepare-unwritable-out", lambda d, s: prepare(d, "--out", str(not_a_dir(d) / "store")),
         ("occupied: cannot create output directory", "expected a writable directory")),
    Case("hml-wrong-type", lambda d, s: ["hml.py", f"store={copy_store(s, d)}", f"output_dir={d / 'out'}",
                                         "stages=two"],
         ("stages: got str 'two'", "expected an integer")),
    Case("full-unknown-key-suggests", lambda d, s: ["full.py", "--preset", "tiny", f"run_dir={d / 'runs'}",
                                                    "hml.lamb=0.25"],
         ("hml.lamb: unknown config key; did you mean 'lam'?",)),
    Case("full-non-finite-value", lambda d, s: ["full.py", "--preset", "tiny", f"run_dir={d / 'runs'}", "hml.lam=nan"],
         ("hml.lam: got 'nan'", "expected a finite number")),
    Case("full-unparsable-list", lambda d, s: ["full.py", "--preset", "tiny", f"run_dir={d / 'runs'}",
                                               "diffaug.variants=[baseline_ce,diffaug_so"],
         ("diffaug.variants: cannot parse", "expected a list such as [a, b]")),
    Case("full-conflicting-presets", lambda d, s: ["full.py", "--preset", "tiny", f"run_dir={d / 'runs'}",
                                                   "preset=paper"],
         ("--preset tiny conflicts with preset=paper",)),
    Case("hml-unwritable-output-dir",
         lambda d, s: ["hml.py", f"store={copy_store(s, d)}", f"output_dir={not_a_dir(d) / 'hml'}", "progress=false"],
         ("occupied/hml: cannot create output directory", "expected a writable directory")),
    # VG-150 h5/json (check_data; a plot from an earlier run must survive)
    Case("vg150-truncated-h5", lambda d, s: check_vg(d, lambda r: (r / "VG-SGG-with-attri.h5").write_bytes(
        (r / "VG-SGG-with-attri.h5").read_bytes()[:300])),
        ("VG-SGG-with-attri.h5: unreadable HDF5 (truncated or not HDF5)", "expected a complete h5 file")),
    Case("vg150-missing-image-data-json", lambda d, s: check_vg(d, lambda r: (r / "image_data.json").unlink()),
         ("image_data.json: file missing", "expected Visual Genome image metadata")),
    Case("vg150-truncated-dicts-json", lambda d, s: check_vg(
        d, lambda r: (r / "VG-SGG-dicts-with-attri.json").write_text('{"idx_to_label": ')),
        ("VG-SGG-dicts-with-attri.json: corrupt JSON", "expected a valid JSON file")),
    Case("vg150-h5-missing-key", lambda d, s: check_vg(d, lambda r: edit_h5(r, "predicates", None)),
         ("VG-SGG-with-attri.h5: missing keys ['predicates']", "expected keys")),
    Case("vg150-label-out-of-range", lambda d, s: check_vg(
        d, lambda r: edit_h5(r, "labels", np.array([[1], [2], [3], [1], [2], [4], [2], [3]]))),
        ("'labels'[5] = 4 out of range", "expected values in [1, 3]")),
    Case("vg150-width-not-a-number", lambda d, s: check_vg(d, lambda r: (r / "image_data.json").write_text(
        json.dumps([{"width": "wide", "height": 1, "image_id": i} for i in range(5)]))),
        ("image_data.json: entry 0 has width 'wide'", "expected positive numbers")),
    Case("vg150-negative-num-val", lambda d, s: check_vg(d, lambda r: None, "--num-val", "-1"),
         ("num_val: -1 is negative", "expected a number of validation images >= 0")),
    # GQA-LT json
    Case("gqa-predicate-out-of-range", lambda d, s: ["check_data.py", str(gqa_with_train(
        d, {"1.jpg": [rel(0, [0, 1, 0, 1], 1, [0, 1, 0, 1], 3)]}))],
        ("rel_annotations_train.json['1.jpg'][0].predicate: label 3 out of range", "expected an integer in [0, 2]")),
    Case("gqa-relation-not-an-object", lambda d, s: ["check_data.py", str(gqa_with_train(d, {"1.jpg": ["on"]}))],
         ("rel_annotations_train.json['1.jpg'][0]: is str 'on'", "expected a relation")),
    # feature store (parquet shards + manifest) written by prepare_data's code, then broken
    Case("store-truncated-parquet", lambda d, s: ["check_data.py", str(trunc_shard(copy_store(s, d)))],
         ("part-00000.parquet: checksum differs from manifest (truncated or modified file)",)),
    Case("store-missing-manifest", lambda d, s: ["check_data.py", str(no_manifest(copy_store(s, d)))],
         ("not a VG-150 directory, GQA-LT directory or feature store", "expected VG-SGG-with-attri.h5")),
    Case("store-missing-column", lambda d, s: ["check_data.py", str(shard(copy_store(s, d), lambda t: t.drop_columns(
        ["rel_fine"])))], ("part-00000.parquet: missing columns ['rel_fine']", "expected columns")),
    Case("store-wrong-feature-dim", lambda d, s: ["check_data.py", str(shard(copy_store(s, d), lambda t: edit_features(
        t, lambda f: [[v[:4] for v in img] for img in f], 4)))],
        ("column 'obj_features' has feature dim 4", "expected dim 8")),
    Case("store-nan-features", lambda d, s: ["check_data.py", str(shard(copy_store(s, d), lambda t: edit_features(
        t, with_nan, 8)))], ("column 'obj_features' holds NaN or inf", "expected finite features")),
    Case("store-label-out-of-range", lambda d, s: ["check_data.py", str(shard(copy_store(s, d), label_999))],
         ("column 'labels' has label 999 out of range", "expected labels in [1, 150]")),
    Case("store-manifest-entry-without-sha256", lambda d, s: ["check_data.py", str(manifest(
        copy_store(s, d), lambda m: m["splits"]["train"]["files"][0].pop("sha256")))],
        ("manifest.json: split 'train' file entry 0", "expected {path, rows, sha256}")),
    # the pipelines on a store they cannot use
    Case("hml-empty-train-split", lambda d, s: ["hml.py", f"store={manifest(copy_store(s, d), empty_train)}",
                                                f"output_dir={d / 'out'}", "progress=false"],
         ("split 'train' is empty", "expected at least one shard")),
    Case("hml-relation-sample-store", lambda d, s: ["hml.py", f"store={copy_store(s, d, 'vrr')}",
                                                    f"output_dir={d / 'out'}", "progress=false"],
         ("store kind 'relation_sample'", "expected a 'scene_graph' store")),
    Case("hml-predicate-without-word-vector",
         lambda d, s: ["hml.py", f"store={copy_store(s, d)}", f"output_dir={good_output_dir(d)}",
                       f"vectors={glove_without_predicates(d)}", "progress=false"],
         ("no known word in ['wearing'", "expected phrases with at least one word in the word-vector vocabulary")),
    Case("hml-gpu-workers-on-a-local-ray-without-gpus",
         lambda d, s: ["hml.py", f"store={copy_store(s, d)}", f"output_dir={d / 'new_out'}", "use_gpu=true",
                       "num_workers=2", "num_cpus=2", "progress=false"],
         (("num_workers / predict_actors / cpus_per_worker / use_gpu: a stage's Ray Train workers (num_workers x cpus_per_worker, "
          "1 GPU each with use_gpu) asks 2 GPUs; the local Ray has 0"), "expected requests that fit it")),
    Case("hml-cpu-workers-beyond-a-local-ray",
         lambda d, s: ["hml.py", f"store={copy_store(s, d)}", f"output_dir={d / 'new_out'}", "num_workers=3",
                       "cpus_per_worker=1", "num_cpus=2", "progress=false"],
         (("a stage's Ray Train workers (num_workers x cpus_per_worker, 1 GPU each with use_gpu) asks 3 CPUs; "
          "the local Ray has 2"),)),
    Case("hml-prediction-actors-beyond-a-local-ray",
         lambda d, s: ["hml.py", f"store={copy_store(s, d)}", f"output_dir={d / 'new_out'}", "predict_actors=3",
                       "cpus_per_worker=1", "num_cpus=2", "progress=false"],
         (("the prediction actors (predict_actors x cpus_per_worker, 1 GPU each with use_gpu) asks 3 CPUs; "
          "the local Ray has 2"),)),
    Case("diffaug-scene-graph-store-keeps-existing-out",
         lambda d, s: ["diffaug.py", "--store", str(copy_store(s, d)), "--out", str(good_output_dir(d))],
         ("store kind 'scene_graph'", "expected a 'relation_sample' store")),
    Case("diffaug-scene-graph-store-creates-no-out",
         lambda d, s: ["diffaug.py", "--store", str(copy_store(s, d)), "--out", str(d / "new_out")],
         ("store kind 'scene_graph'", "expected a 'relation_sample' store")),
    Case("diffaug-cpu-request-larger-than-the-cluster",
         lambda d, s: ["diffaug.py", "--store", str(copy_store(s, d, "vrr")), "--out", str(d / "new_out"),
                       "num_cpus=2", "cpus_per_actor=1.5"],
         ("the diffusion training actor (2 x cpus_per_actor) asks 3 CPUs; the local Ray has 2",
          "expected requests that fit it")),
    Case("diffaug-synset-override-for-unknown-class",
         lambda d, s: ["diffaug.py", "--store", str(copy_store(s, d, "vrr")), "--out", str(d / "new_out"),
                       "synsets={no_such_class: dog.n.01}"],
         ("synsets: classes ['no_such_class'] are not in the store's vocabulary", "expected object class names")),
    # evaluation inputs
    Case("evaluate-sgg-not-a-predictions-dir", lambda d, s: ["evaluate.py", "sgg", str(copy_store(s, d))],
         ("sgg_store/manifest.json: is not an SGG prediction manifest", "expected format 'hmldiff-sgg-predictions'")),
    Case("evaluate-ltvrr-truncated-npz", lambda d, s: ["evaluate.py", "ltvrr", str(truncated_npz(d))],
         ("preds.npz: unreadable", "expected an .npz file written by this module")),
    # checkpoints (weights_only / safetensors) of another model or config
    Case("component-hml-checkpoint-of-another-model", lambda d, s: hml_checkpoint_of_another_model(d),
         ("final.pt: written for model_hash='aaaa'", "expected model_hash='bbbb'")),
    Case("component-hml-checkpoint-with-pickled-object", lambda d, s: hml_checkpoint_with_pickled_object(d),
         ("final.pt: unreadable checkpoint: Weights only load failed", "argparse.Namespace")),
    Case("component-predictor-of-another-config", lambda d, s: predictor_of_another_config(d),
         ("model.safetensors: written by predictor 'mlp' with another config: hidden_dim: checkpoint 8 vs expected 16",)),
]


def trunc_shard(store: Path) -> Path:
    p = store / "train" / "part-00000.parquet"
    p.write_bytes(p.read_bytes()[:-100])
    return store


def no_manifest(store: Path) -> Path:
    (store / MANIFEST).unlink()  # as a crash before StoreWriter.close() leaves it
    return store


def shard(store: Path, change: Callable[[pa.Table], pa.Table]) -> Path:
    rewrite_shard(store, change)
    return store


def manifest(store: Path, change: Callable[[dict], object]) -> Path:
    edit_manifest(store, change)  # type: ignore[arg-type]
    return store


def empty_train(m: dict) -> None:
    m["splits"]["train"].update(rows=0, files=[])


def truncated_npz(d: Path) -> Path:
    p = d / "preds.npz"
    buf = io.BytesIO()
    np.savez(buf, gt_rel=np.arange(10), pred_rel=np.arange(10))
    p.write_bytes(buf.getvalue()[:60])
    return p


# ------------------------------------------------------------------------------------------ checks
def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file (and a marker per directory) under `root`: any write shows up as a difference."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run(r: Run) -> tuple[int, str]:
    """(exit code, stderr) of a CLI run in a subprocess, or of a component call through the CLIs' exit path."""
    if callable(r):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = exit_code(r)
        return code, err.getvalue()
    p = subprocess.run([sys.executable, str(ROOT / "pipelines" / r[0]), *r[1:]], capture_output=True, text=True,
                       env=subprocess_env(), cwd=ROOT, timeout=300, check=False)
    return p.returncode, p.stderr


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_clear_error_and_writes_nothing(case: Case, stores, tmp_path):
    d = tmp_path / "case"
    d.mkdir()
    command = case.build(d, stores)
    before = snapshot(tmp_path)
    code, stderr = run(command)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code != 0, stderr
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for text in case.expect:
        assert text in lines[0], lines[0]
    assert snapshot(tmp_path) == before  # no output, no temp file, inputs and earlier outputs untouched

