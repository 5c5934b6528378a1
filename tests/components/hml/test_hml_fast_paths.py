"""The fast paths of HML's MR bookkeeping equal the plain formulas: the flat hand-written MR backward, and the
flat-buffer importance tracker (Fisher as sum/t, rows without gradient adding 0) under Adam with embeddings."""
import copy

import numpy as np
import torch

from components.hml.importance import fisher_running_mean, importance_increment, mr_loss, normalize_importance
from components.hml.plugins import ClassBalancedCE, ImportanceTracker, StepContext
from components.hml.trainer import StageTrainer
from components.models.pairs import sample_pairs
from components.models.registry import build_predictor


def test_mr_loss_value_and_gradient_match_autograd_of_the_formula():
    g = torch.Generator().manual_seed(0)
    shapes = {"w": (4, 3), "b": (3,), "e": (5, 2, 2)}
    params = {n: torch.randn(s, generator=g, dtype=torch.float64, requires_grad=True) for n, s in shapes.items()}
    anchors = {n: torch.randn(s, generator=g, dtype=torch.float64) for n, s in shapes.items()}
    fisher = {n: torch.rand(s, generator=g, dtype=torch.float64) for n, s in shapes.items()}
    imp = {n: torch.rand(s, generator=g, dtype=torch.float64) for n, s in shapes.items()}
    got = mr_loss(params, anchors, fisher, imp)
    grads = torch.autograd.grad(got, list(params.values()))
    ref_params = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
    total = sum(p.numel() for p in params.values())
    want = sum(((fisher[n] + imp[n]) * (p - anchors[n]) ** 2).sum() for n, p in ref_params.items()) / total
    want_grads = torch.autograd.grad(want, list(ref_params.values()))
    assert torch.allclose(got, want)
    assert all(torch.allclose(a, b) for a, b in zip(grads, want_grads))
    assert torch.autograd.gradcheck(lambda w: mr_loss({"w": w}, {"w": anchors["w"]}, {"w": fisher["w"]},
                                                      {"w": imp["w"]}), (params["w"],))


def _images(n: int, rng: np.random.Generator) -> list[dict]:
    out = []
    for i in range(n):
        k = int(rng.integers(3, 6))
        boxes = np.sort(rng.uniform(0, 50, (k, 4)).reshape(k, 2, 2), axis=1).transpose(0, 2, 1).reshape(k, 4)
        out.append({"image_id": f"im{i}", "width": 60, "height": 60, "boxes": boxes, "labels": rng.integers(1, 7, k),
                    "obj_features": rng.normal(size=(k, 8)).astype(np.float32),
                    "rels": np.array([[0, 1, 1 + i % 4], [2, 0, 1 + (i + 1) % 4]])})
    return out


def test_flat_importance_tracker_equals_per_tensor_formulas_under_adam_and_resumes():
    rng = np.random.default_rng(0)
    batches = [sample_pairs(_images(3, rng), rng, 8, 4) for _ in range(6)]
    torch.manual_seed(0)
    table = rng.normal(size=(7, 7, 5)).astype(np.float32)
    model = build_predictor("mlp", 6, 4, 8, freq_bias=table, hidden_dim=16, dropout=0.0)
    ce = ClassBalancedCE({1: 3, 2: 2, 3: 1, 4: 1}, 0.0)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    tracker = ImportanceTracker(model)
    trainer = StageTrainer(model, [ce, tracker], opt)
    fisher = {n: torch.zeros_like(p) for n, p in model.relation_parameters()}
    omega = {n: torch.zeros_like(p) for n, p in model.relation_parameters()}
    for t, batch in enumerate(batches, start=1):
        before = {n: p.detach().clone() for n, p in model.relation_parameters()}
        probe = copy.deepcopy(model)
        ce.loss_terms(StepContext(batch, probe(batch), probe, t))[0].value.backward()
        grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in probe.relation_parameters()}
        trainer.train_step(batch)
        for n, p in model.relation_parameters():
            fisher[n] = fisher_running_mean(fisher[n], grads[n] ** 2, t)
            omega[n] += importance_increment(grads[n], p.detach() - before[n], fisher[n])
        if t == 3:  # resume a fresh tracker from a checkpoint of this one
            resumed = ImportanceTracker(model)
            resumed.load_state_dict(copy.deepcopy(tracker.state_dict()))
            assert torch.equal(resumed.sq_sum, tracker.sq_sum) and torch.equal(resumed.omega, tracker.omega)  # exact
            trainer.plugins = [ce, resumed]
            tracker = resumed
    table_grad_rows = (grads["encoder.label_embed.weight"].abs().sum(1) > 0)
    moved_rows = ((model.encoder.label_embed.weight.detach() - before["encoder.label_embed.weight"]).abs().sum(1) > 0)
    assert (moved_rows & ~table_grad_rows).any()  # Adam moved rows without gradient: they must add 0
    f, o = tracker.result()
    want_o = normalize_importance(omega)
    for n, want_f in fisher.items():
        assert torch.allclose(f[n], want_f, rtol=1e-5, atol=1e-8), n
        assert torch.allclose(o[n], want_o[n], atol=1e-5), n
