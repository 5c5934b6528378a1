"""check_data CLI: detects VG-150, GQA-LT and feature stores; hand-known sizes; one error line and exit 1."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import subprocess_env

from components.data.store import StoreWriter

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "components" / "data"))
from test_data_gqa import write_gqa
from test_data_vg150 import IMAGES, SIZES, write_vg


def run(*args):
    return subprocess.run([sys.executable, str(ROOT / "pipelines" / "check_data.py"), *map(str, args)],
                          capture_output=True, text=True, env=subprocess_env(), timeout=120, check=False)


def test_vg150_json_and_plot(tmp_path):
    r = run(write_vg(tmp_path / "vg"), "--json", "--num-val", "1", "--plot", tmp_path / "tail.png")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["kind"] == "vg150"
    assert s["splits"] == {"train": {"images": 1, "objects": 3, "relations": 2, "self_relations_dropped": 0},
                           "val": {"images": 1, "objects": 2, "relations": 1, "self_relations_dropped": 0},
                           "test": {"images": 1, "objects": 2, "relations": 1, "self_relations_dropped": 0}}
    assert s["predicate_counts"] == {"on": 1, "has": 1} and s["object_counts"] == {"man": 1, "horse": 1, "hat": 1}
    assert (tmp_path / "tail.png").read_bytes()[:4] == b"\x89PNG"


def test_vg150_self_relations_are_counted(tmp_path):
    """Relations of a box to itself cannot be predicted (only pairs i != j are scored): the reader drops them
    and the summary says how many."""
    images = [(0, IMAGES[0][1], IMAGES[0][2], [(0, 1, 1), (1, 1, 2)]), IMAGES[1], IMAGES[2]]
    r = run(write_vg(tmp_path / "vg", images=images, sizes=SIZES[:3]), "--json", "--num-val", "0")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["splits"]["train"] == {"images": 2, "objects": 5, "relations": 3,
                                                       "self_relations_dropped": 1}


def test_gqa_lt_and_text_summary(tmp_path):
    root = write_gqa(tmp_path / "g")
    s = json.loads(run(root, "--json").stdout)
    assert s["kind"] == "gqa_lt" and set(s["splits"]) == {"train", "test"}
    # train: 3 relations in 2 images; image 1.jpg has 3 distinct boxes (shared subject), 2.jpg has 2
    assert s["splits"]["train"] == {"images": 2, "objects": 5, "relations": 3}
    assert s["predicate_counts"] == {"on": 50, "wearing": 30, "riding": 1}
    text = run(root).stdout
    assert "gqa_lt" in text and "riding" in text


def test_feature_store(tmp_path):
    w = StoreWriter(tmp_path / "s", "scene_graph", 2, ["a", "b"], ["on", "has", "near"])
    rows = [{"image_id": str(i), "split": "train", "width": 10, "height": 10, "boxes": np.zeros((2, 4)), "labels": [1, 2],
                 "obj_features": np.zeros((2, 2)), "rels": [[0, 1, 2]] * i, "rel_fine": [2] * i} for i in range(3)]
    w.write("train", rows)
    w.close()
    s = json.loads(run(tmp_path / "s", "--json").stdout)
    assert s["kind"] == "feature_store:scene_graph"
    assert s["splits"] == {"train": {"images": 3, "objects": 6, "relations": 3}}
    assert s["predicate_counts"] == {"on": 0, "has": 3, "near": 0}


def test_feature_store_with_detections(tmp_path):
    w = StoreWriter(tmp_path / "d", "scene_graph", 2, ["a", "b"], ["on", "has", "near"], detections=True)
    w.write("test", [{"image_id": str(i), "split": "test", "width": 10, "height": 10, "boxes": np.zeros((2, 4)),
                      "labels": [1, 2], "obj_features": np.zeros((2, 2)), "rels": [[0, 1, 2]], "rel_fine": [2],
                      "det_boxes": np.zeros((i, 4)), "det_features": np.zeros((i, 2))} for i in range(4)])
    w.close()
    assert json.loads(run(tmp_path / "d", "--json").stdout)["splits"]["test"]["detections"] == 6
    text = run(tmp_path / "d").stdout.splitlines()
    assert text[1].split() == ["split", "images", "objects", "relations", "detections"]
    assert text[2].split() == ["test", "4", "8", "4", "6"]


@pytest.mark.parametrize("breaker, message", [
    (lambda p: (p / "VG-SGG-with-attri.h5").write_bytes(b"\x89HDF\r\n"), "unreadable HDF5"),
    (lambda p: (p / "image_data.json").write_text("[{"), "image_data.json: corrupt JSON"),
    (lambda p: [f.unlink() for f in p.iterdir()], "not a VG-150 directory, GQA-LT directory or feature store"),
])
def test_bad_inputs_exit_1_with_one_line(tmp_path, breaker, message):
    root = write_vg(tmp_path / "vg")
    breaker(root)
    r = run(root, "--json")
    assert r.returncode == 1 and r.stdout == ""
    assert message in r.stderr and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


def test_missing_path(tmp_path):
    r = run(tmp_path / "nothing")
    assert r.returncode == 1 and "path not found" in r.stderr
