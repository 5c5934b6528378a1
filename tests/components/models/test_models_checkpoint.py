"""Checkpoint round trip (every predictor), mismatch errors naming the difference, corrupt files."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from components.errors import CheckpointError
from components.models.checkpoint import checkpoint_info, load_predictor, save_predictor
from components.models.pairs import all_pairs
from components.models.registry import PREDICTORS, build_predictor

N_OBJ, N_PRED, DIM = 4, 3, 5


def images():
    r = np.random.default_rng(0)
    out = []
    for n in (3, 5):
        xy = r.uniform(0, 50, (n, 2))
        out.append({"width": 80, "height": 60, "labels": r.integers(1, N_OBJ + 1, n),
                    "boxes": np.concatenate([xy, xy + 10], 1).astype(np.float32),
                    "obj_features": r.normal(size=(n, DIM)).astype(np.float32), "rels": np.array([[0, 1, 2]])})
    return out


@pytest.mark.parametrize("mode", ["predcls", "sgcls"])
@pytest.mark.parametrize("name", PREDICTORS)
def test_round_trip(tmp_path, name, mode):
    torch.manual_seed(1)
    fb = np.random.default_rng(0).normal(size=(N_OBJ + 1, N_OBJ + 1, N_PRED + 1)).astype(np.float32)
    model = build_predictor(name, N_OBJ, N_PRED, DIM, freq_bias=fb, hidden_dim=8, mode=mode).eval()
    path = save_predictor(model, tmp_path / "m.safetensors", extra={"stage": 2})
    loaded = load_predictor(path, expected=model.build_spec).eval()
    assert loaded.mode == mode
    batch = all_pairs(images())
    assert torch.equal(model(batch), loaded(batch))
    if mode == "sgcls":
        assert torch.equal(model.object_logits, loaded.object_logits)
    info = checkpoint_info(path)
    assert info["extra"] == {"stage": 2} and info["build_spec"] == model.build_spec
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp files left


def test_mismatch_names_the_difference(tmp_path):
    model = build_predictor("mlp", N_OBJ, N_PRED, DIM, hidden_dim=8)
    path = save_predictor(model, tmp_path / "m.safetensors")
    other = build_predictor("motifs", N_OBJ, N_PRED, DIM, hidden_dim=8).build_spec
    with pytest.raises(CheckpointError, match="name: checkpoint 'mlp' vs expected 'motifs'"):
        load_predictor(path, expected=other)
    wider = build_predictor("mlp", N_OBJ, N_PRED, DIM, hidden_dim=16).build_spec
    with pytest.raises(CheckpointError, match="hidden_dim: checkpoint 8 vs expected 16"):
        load_predictor(path, expected=wider)
    sgcls = build_predictor("mlp", N_OBJ, N_PRED, DIM, hidden_dim=8, mode="sgcls").build_spec
    with pytest.raises(CheckpointError, match="mode: checkpoint '<absent>' vs expected 'sgcls'"):
        load_predictor(path, expected=sgcls)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_predictor(tmp_path / "absent.safetensors")
    model = build_predictor("mlp", N_OBJ, N_PRED, DIM, hidden_dim=8)
    path = save_predictor(model, tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_predictor(path)
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_predictor(tmp_path / "junk.safetensors")


def _rewrite_metadata(path, **changes):
    """Rewrite the checkpoint at `path` with its metadata changed (None deletes a key), weights kept."""
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
        state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open is not iterable
    meta.update(changes)
    save_file(state, str(path), metadata={k: v for k, v in meta.items() if v is not None})


@pytest.mark.parametrize("changes, message", [
    ({"build_spec": None}, r"metadata misses keys \['build_spec'\]"),
    ({"config_hash": None}, r"metadata misses keys \['config_hash'\]"),
    ({"extra": None}, r"metadata misses keys \['extra'\]"),
    ({"build_spec": '{"name": "mlp",'}, "metadata 'build_spec' is not valid JSON"),
    ({"extra": "{oops"}, "metadata 'extra' is not valid JSON"),
    ({"extra": "[1, 2]"}, "metadata 'extra' is a JSON list"),
])
def test_incomplete_or_corrupt_metadata_names_the_key(tmp_path, changes, message):
    path = save_predictor(build_predictor("mlp", N_OBJ, N_PRED, DIM, hidden_dim=8), tmp_path / "m.safetensors")
    _rewrite_metadata(path, **changes)
    with pytest.raises(CheckpointError, match=f"m.safetensors: {message}"):
        checkpoint_info(path)
    with pytest.raises(CheckpointError, match=message):
        load_predictor(path)
