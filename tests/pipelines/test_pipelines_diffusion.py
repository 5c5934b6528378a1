"""Ray diffusion pipeline on a real local Ray: training actor with checkpoints, actor-pool sampling into shards."""
from __future__ import annotations

import json

import numpy as np
import pytest

from components.diffaug.diffusion import DiffusionConfig, load_bundle
from components.diffaug.sampling import sample_features
from components.errors import InputError
from components.stages import arrays_hash
from pipelines import diffusion
from pipelines.diffusion import SamplerPool, load_samples, sample_on_ray, train_diffusion_on_ray

N, D, E, T, K = 23, 8, 5, 3, 4
SHARDS = 60  # in the actor-kill test: enough that sampling is still going on when the kill lands


@pytest.fixture(scope="module")
def trained(ray_local, tmp_path_factory):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(40, D)).astype(np.float32)
    text = rng.normal(size=(40, T, E)).astype(np.float32)
    hard = rng.random((40, K)).astype(np.float32)
    cfg = DiffusionConfig(steps=6, batch_size=16, hidden=16, layers=1, heads=2, tokens=2, num_inference_steps=3,
                          dtype="float32")
    out = tmp_path_factory.mktemp("train")
    res = train_diffusion_on_ray(feats, text, np.ones((40, T), bool), hard, cfg, out, cpus=0.5, checkpoint_every=3)
    return out, res, cfg


def _requests(n: int = N, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    return {"sample_id": np.arange(1000, 1000 + n), "subject": rng.integers(0, 5, n), "object": rng.integers(0, 5, n),
            "predicate": rng.integers(0, 3, n), "text": rng.normal(size=(n, T, E)).astype(np.float32),
            "text_mask": np.ones((n, T), bool), "hardness": rng.random((n, K)).astype(np.float32)}


def test_one_pool_serves_several_calls_with_the_same_results(trained, tmp_path):
    """A SamplerPool's actors stay up across calls (the same processes sample both requests) and give the
    same vectors as a per-call pool and the in-process loop."""
    _, res, _ = trained
    import ray

    with SamplerPool(num_actors=2, cpus_per_actor=0.5).wait_ready() as pool:
        pids = sorted(ray.get([a.__ray_call__.remote(lambda self: __import__("os").getpid()) for a in pool.actors]))
        for k, req in enumerate((_requests(), _requests(n=9, seed=3))):
            manifest = sample_on_ray(res["bundle"], req, tmp_path / f"r{k}", shard_size=4, batch_size=4,
                                     progress=False, pool=pool)
            assert manifest["skipped_shards"] == 0
            table = load_samples(tmp_path / f"r{k}")
            order = np.argsort(table.column("sample_id").to_numpy())
            got = np.stack(table.column("feature").to_numpy(zero_copy_only=False))[order]
            want = sample_features(load_bundle(res["bundle"]), req["text"], req["text_mask"], req["hardness"],
                                   req["sample_id"])
            assert np.allclose(got, want, atol=1e-5)
        assert sorted(ray.get([a.__ray_call__.remote(lambda self: __import__("os").getpid())
                               for a in pool.actors])) == pids
    assert pool.actors == []


def test_every_actor_computes_in_the_dtype_the_driver_resolved(trained, tmp_path):
    """The driver resolves the compute dtype once and the actors use it whatever their own CPU would pick (a
    bundle trained in fp32 sampled in bf16 here): equal to the in-process loop in that dtype, not to fp32. The
    dtype is in the manifest and keys the shards (another dtype never resumes into them)."""
    from components.diffaug.sampling import inference_bundle

    _, res, _ = trained
    req = _requests(n=8)
    bundle = load_bundle(res["bundle"])
    assert diffusion.compute_dtype(bundle) == "float32"  # what 'float32' resolves to on any machine
    with SamplerPool(num_actors=2, cpus_per_actor=0.5).wait_ready() as pool:
        manifest = sample_on_ray(res["bundle"], req, tmp_path, shard_size=4, batch_size=4, progress=False,
                                 pool=pool, dtype="bfloat16")
        assert manifest["dtype"] == "bfloat16"
        table = load_samples(tmp_path)
        got = np.stack(table.column("feature").to_numpy(zero_copy_only=False))[np.argsort(table.column("sample_id"))]
        args = (req["text"], req["text_mask"], req["hardness"], req["sample_id"])
        bf16 = sample_features(inference_bundle(bundle, "bfloat16"), *args, batch_size=4)
        fp32 = sample_features(bundle, *args, batch_size=4)
        assert np.array_equal(got, bf16) and not np.allclose(got, fp32, atol=1e-4)
        with pytest.raises(InputError, match="another request, bundle, sampling setting"):
            sample_on_ray(res["bundle"], req, tmp_path, shard_size=4, batch_size=4, progress=False, pool=pool,
                          dtype="float32")
    with pytest.raises(InputError, match="sample_on_ray dtype: 'fp16'"):
        sample_on_ray(res["bundle"], req, tmp_path / "x", progress=False, dtype="fp16")
    assert not (tmp_path / "x").exists()


def test_training_actor_writes_bundle_checkpoints_and_metrics(trained):
    out, res, cfg = trained
    assert len(res["loss"]) == 6 and all(np.isfinite(res["loss"]))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000003.safetensors",
                                                                        "step-0000006.safetensors"]
    assert json.loads((out / "metrics.json").read_text())["loss"] == res["loss"]
    load_bundle(res["bundle"], expected=cfg)


def test_pool_sampling_writes_every_id_once_equal_to_in_process(trained, tmp_path):
    _, res, _ = trained
    req = _requests()
    manifest = sample_on_ray(res["bundle"], req, tmp_path, num_actors=2, shard_size=5, batch_size=4, progress=False)
    assert len(manifest["shards"]) == 5 and manifest["skipped_shards"] == 0
    assert all(s["seconds"] > 0 for s in manifest["shards"])  # each actor's own time per shard
    table = load_samples(tmp_path)
    ids = table.column("sample_id").to_numpy()
    assert sorted(ids.tolist()) == req["sample_id"].tolist()
    got = np.stack(table.column("feature").to_numpy(zero_copy_only=False))
    want = sample_features(load_bundle(res["bundle"]), req["text"], req["text_mask"], req["hardness"], req["sample_id"])
    assert np.allclose(got, want, atol=1e-5)
    assert np.array_equal(table.column("subject").to_numpy(), req["subject"])

    # rerun: every shard is complete and skipped; a deleted shard alone is redone, identically
    again = sample_on_ray(res["bundle"], req, tmp_path, num_actors=2, shard_size=5, progress=False)
    assert again["skipped_shards"] == 5
    (tmp_path / "shard-00002.parquet").unlink()
    (tmp_path / "shard-00003.parquet").write_bytes(b"truncated")
    redo = sample_on_ray(res["bundle"], req, tmp_path, num_actors=1, shard_size=5, progress=False)
    assert redo["skipped_shards"] == 3
    assert [s["seconds"] is None for s in redo["shards"]] == [True, True, False, False, True]
    table2 = load_samples(tmp_path)
    assert np.allclose(np.stack(table2.column("feature").to_numpy(zero_copy_only=False)), got, atol=1e-5)

    # a different request refuses to mix into this directory, also with the same ids (another plan or condition)
    with pytest.raises(InputError, match="another request"):
        sample_on_ray(res["bundle"], _requests(n=7, seed=2), tmp_path, shard_size=5, progress=False)
    same_ids = dict(req, hardness=req["hardness"] + 1.0)
    with pytest.raises(InputError, match="another request"):
        sample_on_ray(res["bundle"], same_ids, tmp_path, shard_size=5, progress=False)


def test_a_callers_request_hash_is_not_taken_again_and_keys_the_shards_alike(trained, tmp_path, monkeypatch):
    """DiffAugment hashes its request to name the sample directory and passes the hash on: sample_on_ray then
    hashes nothing, and keys the shards as its own hash would (a call without the hash resumes them)."""
    _, res, _ = trained
    req = _requests(n=6)
    hashed: list[int] = []
    monkeypatch.setattr(diffusion, "arrays_hash", lambda arrays: hashed.append(len(arrays)) or arrays_hash(arrays))
    first = sample_on_ray(res["bundle"], req, tmp_path, shard_size=3, progress=False, requests_hash=arrays_hash(req))
    assert hashed == [] and first["skipped_shards"] == 0
    again = sample_on_ray(res["bundle"], req, tmp_path, shard_size=3, progress=False)
    assert hashed == [len(req)] and again["skipped_shards"] == 2


def test_bad_requests_are_rejected(trained, tmp_path):
    _, res, _ = trained
    req = _requests()
    req["sample_id"] = np.zeros(N, int)
    with pytest.raises(InputError, match="duplicates"):
        sample_on_ray(res["bundle"], req, tmp_path, progress=False)
    req = _requests()
    del req["text"]
    with pytest.raises(InputError, match="missing columns"):
        sample_on_ray(res["bundle"], req, tmp_path, progress=False)


def test_killed_sampling_actor_loses_no_sample_and_changes_none(trained, tmp_path):
    """SIGKILL one pool actor once it has sampled (the first shard is written) and while shards are still
    due: Ray restarts it and retries its shard; the output holds every requested id exactly once and equals
    an uninterrupted in-process run (per-id determinism). The victim is this pool's own actor, by the pid it
    reports (a scan of process titles once picked a dying actor of an earlier test's pool in CI)."""
    import os
    import signal
    import threading
    import time

    _, res, _ = trained
    req = _requests(n=SHARDS * 2, seed=3)
    killed: list[tuple[int, int]] = []  # (pid, shards written when it was killed)
    errors: list[OSError] = []

    def kill_one(pid: int) -> None:
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if any(tmp_path.glob("shard-*.parquet")):
                    os.kill(pid, signal.SIGKILL)
                    killed.append((pid, len(list(tmp_path.glob("shard-*.parquet")))))
                    return
                time.sleep(0.002)
        except OSError as e:  # e.g. ProcessLookupError: surfaced in the test, not lost in the thread
            errors.append(e)

    with SamplerPool(num_actors=2, cpus_per_actor=0.5).wait_ready() as pool:
        assert len(set(pool.pids)) == 2 and os.getpid() not in pool.pids
        killer = threading.Thread(target=kill_one, args=(pool.pids[0],))
        killer.start()
        sample_on_ray(res["bundle"], req, tmp_path, shard_size=2, batch_size=2, progress=False, pool=pool)
        killer.join()
    assert not errors, errors
    assert killed, "no shard was written while the killer watched"
    ((_, shards_at_kill),) = killed
    assert 0 < shards_at_kill < SHARDS, "the kill must land after a shard was written and before the last"
    table = load_samples(tmp_path)
    ids = table.column("sample_id").to_numpy()
    assert sorted(ids.tolist()) == req["sample_id"].tolist() and len(set(ids.tolist())) == len(ids)
    got = np.stack(table.column("feature").to_numpy(zero_copy_only=False))
    want = sample_features(load_bundle(res["bundle"]), req["text"], req["text_mask"], req["hardness"], req["sample_id"])
    assert np.allclose(got, want, atol=1e-5)
