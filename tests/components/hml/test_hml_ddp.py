"""HML stage-2 steps under real DistributedDataParallel (2 gloo processes on CPU, different data per rank):
the importance tracker reads the all-reduced gradients, so both ranks end with the same Fisher,
importance and parameters, equal to a single process stepping on the mean of the two ranks' losses
and different from a single process on rank 0's data alone."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from components.hml.plugins import StepContext
from components.hml.trainer import PreviousStage, StageTrainer, stage_plugins
from components.models.pairs import sample_pairs
from components.models.registry import build_predictor

C_OBJ, C_PRED, DIM, STEPS = 5, 4, 6, 4
STAGE2_LABELS = np.array([0, -1, -1, 3, 4])  # stage 2: predicates 3, 4 positive; 1, 2 seen in stage 1
COUNTS, SEEN = {3: 4, 4: 2}, [1, 2, 3, 4]


def _images(n: int, seed: int) -> list[dict]:
    """`n` tiny scene graphs (4 objects, 3 relations each); the seed makes each rank's data different."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        xy = rng.uniform(0, 50, (4, 2))
        rels = np.array([[0, 1, 1 + (k + seed) % C_PRED], [2, 3, 1 + (k + 1) % C_PRED], [1, 2, 3 + k % 2]])
        out.append({"image_id": f"{seed}-{k}", "width": 100, "height": 100,
                    "boxes": np.concatenate([xy, xy + 20], 1).astype(np.float32),
                    "labels": rng.integers(1, C_OBJ + 1, 4), "obj_features": rng.normal(size=(4, DIM)),
                    "rels": rels})
    return out


def _rank_batches(rank: int) -> list:
    """The STEPS pair batches rank `rank` trains on (its own images and pair-sampling RNG)."""
    rng = np.random.default_rng([7, rank])
    images = _images(4, seed=100 + rank)
    return [sample_pairs(images, rng, 8, 6, STAGE2_LABELS) for _ in range(STEPS)]


def _model(seed: int, spec: tuple[str, str]):
    """Predictor `spec` = (name, mode), e.g. ("motifs", "sgcls")."""
    torch.manual_seed(seed)
    fb = np.random.default_rng(seed).normal(size=(C_OBJ + 1, C_OBJ + 1, C_PRED + 1)).astype(np.float32)
    return build_predictor(spec[0], C_OBJ, C_PRED, DIM, freq_bias=fb, hidden_dim=8, dropout=0.0, mode=spec[1])


def _previous(path: Path, spec: tuple[str, str]) -> PreviousStage:
    """The frozen stage-1 model with its anchors, Fisher and importance, as saved by the parent process."""
    state = torch.load(path)
    old = _model(0, spec)
    old.load_state_dict(state["model"])
    return PreviousStage(old, [1, 2], state["anchors"], state["fisher"], state["importance"])


def _stage2(model, previous: PreviousStage):
    """Stage-2 plugins (CB-CE + CR + MR + importance tracker) and an Adam optimiser for `model`."""
    plugins, tracker = stage_plugins(model, COUNTS, SEEN, 0.9, previous, cr_weight=3.0, lam=50.0)
    return plugins, tracker, torch.optim.Adam(model.parameters(), lr=1e-2)


def _snapshot(model, tracker) -> dict:
    fisher, importance = tracker.result()
    return {"fisher": fisher, "importance": importance,
            "params": {n: p.detach().clone() for n, p in model.named_parameters()}}


def _ddp_worker(rank: int, world: int, init_file: str, prev_path: str, out_dir: str, spec: tuple[str, str]) -> None:
    """One DDP rank: STEPS StageTrainer steps on its own batches; saves F, Omega and parameters."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = DistributedDataParallel(_model(1 + rank, spec))  # DDP broadcasts rank 0's initial weights
        plugins, tracker, opt = _stage2(model.module, _previous(Path(prev_path), spec))
        trainer = StageTrainer(model, plugins, opt)
        trainer.run(_rank_batches(rank), STEPS, progress=False)
        assert all(m["loss_cr"] > 0 and m["loss_mr"] > 0 for m in trainer.history)
        assert all(m.get("loss_obj", 1.0) > 0 for m in trainer.history) and (spec[1] == "sgcls") == (
            "loss_obj" in trainer.history[0])
        torch.save(_snapshot(model.module, tracker), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _single_process(batch_lists: list[list], prev_path: Path, spec: tuple[str, str]) -> dict:
    """STEPS steps in one process on the MEAN of the per-rank total losses (= the DDP averaged gradient)."""
    model = _model(1, spec)
    plugins, tracker, opt = _stage2(model, _previous(prev_path, spec))
    for step in range(STEPS):
        totals, ctx = [], None
        for batches in batch_lists:
            ctx = StepContext(batches[step], model(batches[step]), model, step + 1)
            totals.append(sum(t.weight * t.value for p in plugins for t in p.loss_terms(ctx)))
        opt.zero_grad(set_to_none=True)
        (sum(totals) / len(totals)).backward()
        tracker.after_backward(ctx)
        opt.step()
        tracker.after_step(ctx)
    return _snapshot(model, tracker)



def _save_stage1(path: Path, spec: tuple[str, str]) -> None:
    """Train a stage-1 model for a few steps and save what stage 2 needs (as the pipeline's checkpoint)."""
    old = _model(0, spec)
    plugins, tracker = stage_plugins(old, {1: 5, 2: 3}, [1, 2], 0.9)
    rng = np.random.default_rng(3)
    images = _images(4, seed=3)
    batches = [sample_pairs(images, rng, 8, 6, np.array([0, 1, 2, -1, -1])) for _ in range(3)]
    StageTrainer(old, plugins, torch.optim.Adam(old.parameters(), lr=1e-2)).run(batches, 3, progress=False)
    fisher, importance = tracker.result()
    torch.save({"model": old.state_dict(), "fisher": fisher, "importance": importance,
                "anchors": {n: p.detach().clone() for n, p in old.relation_parameters()}}, path)


def _close(a: dict, b: dict, **tol) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], **tol) for k in a)


@pytest.mark.parametrize("spec", [("mlp", "predcls"), ("motifs", "sgcls")])
def test_ddp_ranks_share_fisher_importance_and_parameters(tmp_path, spec):
    prev = tmp_path / "stage1.pt"
    _save_stage1(prev, spec)
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(prev), str(tmp_path), spec), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for key in ("fisher", "importance", "params"):
        assert all(torch.equal(r0[key][n], r1[key][n]) for n in r0[key]), key  # bit-identical on both ranks
    for key in ("fisher", "importance"):
        assert any((v > 0).any() for v in r0[key].values()), key
    both = _single_process([_rank_batches(0), _rank_batches(1)], prev, spec)
    for key in ("fisher", "importance", "params"):
        assert _close(r0[key], both[key], rtol=1e-4, atol=1e-6), key
    alone = _single_process([_rank_batches(0)], prev, spec)  # what rank 0's local gradient alone gives
    for key in ("fisher", "importance", "params"):
        assert not _close(r0[key], alone[key], rtol=1e-2, atol=1e-4), key
