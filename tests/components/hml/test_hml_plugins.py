"""Stage plugins and trainer on a real predictor: CB weights, CE span, CR on identical pairs,
Fisher/importance bookkeeping against hand computation, stage-2 loss terms, checkpoints."""
import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from components.errors import CheckpointError, DataError, InputError
from components.hml.checkpoint import load_checkpoint, save_checkpoint
from components.hml.importance import fisher_running_mean, importance_increment, normalize_importance
from components.hml.plugins import (
    ClassBalancedCE,
    ConceptReconstruction,
    ImportanceTracker,
    ObjectClassification,
    StepContext,
    class_balanced_weights,
)
from components.hml.trainer import PreviousStage, StageTrainer, stage_plugins, train_stage
from components.models.checkpoint import load_predictor_state
from components.models.pairs import sample_pairs
from components.models.registry import build_predictor

C_OBJ, C_PRED, DIM = 5, 4, 6


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        m = 4
        xy = rng.uniform(0, 50, (m, 2))
        rels = np.array([[0, 1, 1 + k % C_PRED], [2, 3, 1 + (k + 1) % C_PRED], [1, 2, 1]])
        out.append({"image_id": str(k), "width": 100, "height": 100,
                    "boxes": np.concatenate([xy, xy + 20], 1).astype(np.float32),
                    "labels": rng.integers(1, C_OBJ + 1, m), "obj_features": rng.normal(size=(m, DIM)),
                    "rels": rels})
    return out


def _model(seed=0):
    torch.manual_seed(seed)
    return build_predictor("mlp", C_OBJ, C_PRED, DIM, hidden_dim=8, dropout=0.0)


def _batches(label_map, seed=0):
    rng = np.random.default_rng(seed)
    images = _images(4, seed)
    while True:
        yield sample_pairs(images, rng, 8, 4, label_map)


def test_class_balanced_weights_hand_values():
    w = class_balanced_weights({1: 100, 2: 10}, 0.9)
    raw = np.array([0.1 / (1 - 0.9 ** 100), 0.1 / (1 - 0.9 ** 10)])
    assert np.allclose([w[1], w[2]], raw / raw.mean())
    assert class_balanced_weights({1: 100, 2: 10}, 0.0) == {1: 1.0, 2: 1.0}
    assert w[2] > w[1]


def test_ce_spans_background_and_seen_classes_and_ignores_minus_one():
    plugin = ClassBalancedCE({3: 5, 4: 50}, gamma=0.9, seen=[1, 3, 4])
    logits = torch.randn(5, C_PRED + 1)
    labels = torch.tensor([0, 3, -1, 4, 1])
    batch = next(_batches(None))
    batch.pair_labels = labels
    got = plugin.loss_terms(StepContext(batch, logits, _model(), 1))[0].value
    span_logits = logits[:, [0, 1, 3, 4]]
    targets = torch.tensor([0, 2, -1, 3, 1])
    want = F.cross_entropy(span_logits, targets, weight=plugin.weight, ignore_index=-1)
    assert torch.allclose(got, want)
    raw = {3: 0.1 / (1 - 0.9 ** 5), 4: 0.1 / (1 - 0.9 ** 50)}
    assert plugin.weight[0].item() == pytest.approx(0.1 / (sum(raw.values()) / 2))  # background: n -> inf
    assert plugin.weight[0] < plugin.weight[3] and plugin.weight[1] == 1.0  # old class: never a target
    assert ClassBalancedCE({3: 5}, 0.9, seen=[3], background="one").weight[0] == 1.0
    assert ClassBalancedCE({3: 5, 4: 9}, 0.0).weight.tolist() == [1.0, 1.0, 1.0]  # gamma 0 = plain CE
    batch.pair_labels = torch.tensor([0, 2, 0, 0, 0])  # 2 is outside the span
    with pytest.raises(DataError, match="outside"):
        plugin.loss_terms(StepContext(batch, logits, _model(), 1))


class _Recorder(torch.nn.Module):
    """Wraps a model and records the pairs it was called with."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, batch):
        self.seen.append(batch.pairs.clone())
        return self.inner(batch)


def test_cr_zero_for_identical_models_positive_otherwise_on_same_pairs():
    new = _model(0)
    batch = next(_batches(np.array([0, 1, -1, -1, -1])))
    logits = new(batch)
    same = ConceptReconstruction(copy.deepcopy(new), [1], weight=1.0)
    assert same.loss_terms(StepContext(batch, logits, new, 1))[0].value.item() == pytest.approx(0.0, abs=1e-12)
    rec = _Recorder(_model(1))
    other = ConceptReconstruction(rec, [1, 2], weight=1.0)
    value = other.loss_terms(StepContext(batch, logits, new, 1))[0].value
    assert value.item() > 0 and value.requires_grad
    assert torch.equal(rec.seen[0], batch.pairs)
    # Through the trainer: the old model sees exactly the pairs of the new model's batch, every step.
    rec.seen.clear()
    batches = list(zip(range(3), _batches(np.array([0, 1, 2, -1, -1]))))
    plugins = [ClassBalancedCE({2: 3}, 0.9, seen=[1, 2]), ConceptReconstruction(rec, [1], 2.0)]
    hist = train_stage(new, [b for _, b in batches], plugins, torch.optim.SGD(new.parameters(), 0.1), 3,
                       progress=False)
    assert [torch.equal(a, b.pairs) for a, (_, b) in zip(rec.seen, batches)] == [True] * 3
    assert all(h["weighted_cr"] == pytest.approx(2.0 * h["loss_cr"]) for h in hist)


class _Fixed(torch.nn.Module):
    """A 'model' whose logits are a fixed tensor (for hand-computed CR values)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, batch):
        return self.logits


def test_cr_spans_hand_values():
    """Old span: both softmaxes over [bg, old]; stage span: the new softmax over the stage's whole span."""
    old_logits = torch.tensor([[0.0, 1.0, 2.0, 0.0, 0.0], [1.0, 0.0, -1.0, 0.0, 0.0]])
    new_logits = torch.tensor([[0.5, 0.0, 1.0, 2.0, -1.0], [0.0, 1.0, 0.0, 3.0, 0.0]])
    batch = next(_batches(np.array([0, 1, -1, -1, -1])))
    ctx = StepContext(batch, new_logits, _Fixed(new_logits), 1)
    old_p = torch.softmax(old_logits[:, [0, 1, 2]], 1)
    want_old = ((old_p[:, 1:] - torch.softmax(new_logits[:, [0, 1, 2]], 1)[:, 1:]) ** 2).sum() / 2
    want_stage = ((old_p[:, 1:] - torch.softmax(new_logits[:, [0, 1, 2, 3]], 1)[:, 1:3]) ** 2).sum() / 2
    old_mode = ConceptReconstruction(_Fixed(old_logits), [2, 1], weight=1.0)
    stage_mode = ConceptReconstruction(_Fixed(old_logits), [1, 2], weight=1.0, new_span=[1, 2, 3])
    assert old_mode.loss_terms(ctx)[0].value.item() == pytest.approx(want_old.item(), rel=1e-6)
    assert stage_mode.loss_terms(ctx)[0].value.item() == pytest.approx(want_stage.item(), rel=1e-6)
    assert want_old.item() != pytest.approx(want_stage.item(), rel=1e-3)


def test_importance_tracker_matches_hand_formulas():
    model = _model(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    tracker = ImportanceTracker(model)
    plugins = [ClassBalancedCE({1: 3, 2: 2, 3: 1, 4: 1}, 0.0), tracker]
    trainer = StageTrainer(model, plugins, opt)
    names = [n for n, _ in model.relation_parameters()]
    fisher = {n: torch.zeros_like(p) for n, p in model.relation_parameters()}
    omega = {n: torch.zeros_like(p) for n, p in model.relation_parameters()}
    for t, batch in zip(range(1, 4), _batches(None)):
        before = {n: p.detach().clone() for n, p in model.relation_parameters()}
        probe = copy.deepcopy(model)
        ClassBalancedCE({1: 3, 2: 2, 3: 1, 4: 1}, 0.0).loss_terms(
            StepContext(batch, probe(batch), probe, t))[0].value.backward()
        grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in probe.relation_parameters()}
        trainer.train_step(batch)
        for n, p in model.relation_parameters():
            delta = p.detach() - before[n]
            fisher[n] = fisher_running_mean(fisher[n], grads[n] ** 2, t)
            omega[n] += importance_increment(grads[n], delta, fisher[n])
    f, o = tracker.result()
    want_o = normalize_importance(omega)
    for n in names:
        assert torch.allclose(f[n], fisher[n], atol=1e-7)
        assert torch.allclose(o[n], want_o[n], atol=1e-5)
    assert tracker.t == 3 and any((v > 0).any() for v in omega.values())


def test_stage_two_logs_every_term_and_checkpoint_round_trip(tmp_path):
    old = _model(0)
    plugins, tracker = stage_plugins(old, {1: 5, 2: 3}, [1, 2], 0.9)
    train_stage(old, _batches(np.array([0, 1, 2, -1, -1])), plugins, torch.optim.Adam(old.parameters(), 1e-2), 4,
                progress=False)
    fisher, omega = tracker.result()
    anchors = {n: p.detach().clone() for n, p in old.relation_parameters()}
    path = save_checkpoint(tmp_path / "s1.pt", {"predictor": "mlp", "stage": 1},
                           {"model": old.state_dict(), "anchors": anchors, "fisher": fisher, "importance": omega})
    meta, state = load_checkpoint(path, expect={"predictor": "mlp"})
    assert meta["stage"] == 1 and all(torch.equal(state["fisher"][k], fisher[k]) for k in fisher)
    with pytest.raises(CheckpointError, match="predictor"):
        load_checkpoint(path, expect={"predictor": "motifs"})
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "bad.pt")
    frozen = _model(99)
    frozen.load_state_dict(state["model"])
    prev = PreviousStage(frozen, [1, 2], state["anchors"], state["fisher"], state["importance"])
    new = _model(1)
    plugins, _ = stage_plugins(new, {3: 4, 4: 2}, [1, 2, 3, 4], 0.9, prev, cr_weight=3.0, lam=0.5)
    hist = train_stage(new, _batches(np.array([0, -1, -1, 3, 4])), plugins, torch.optim.Adam(new.parameters(), 1e-2),
                       3, progress=False)
    assert len(hist) == 3 and hist[-1]["step"] == 3
    for h in hist:
        assert h["loss_cr"] > 0 and h["loss_mr"] > 0
        assert h["loss"] == pytest.approx(h["weighted_ce"] + h["weighted_cr"] + h["weighted_mr"], rel=1e-5)


def test_weights_that_do_not_fit_name_the_checkpoint(tmp_path):
    """A stage checkpoint of the same config from an older predictor (here: an SGCls MOTIFS object head that
    read the encoding alone, before it read the object context too) is one CheckpointError, not a traceback."""
    old_head = build_predictor("motifs", C_OBJ, C_PRED, DIM, hidden_dim=8, mode="sgcls")
    old_head.object_classifier = torch.nn.Linear(8, C_OBJ + 1)
    path = tmp_path / "final.pt"
    fits = build_predictor("motifs", C_OBJ, C_PRED, DIM, hidden_dim=8, mode="sgcls")
    assert load_predictor_state(fits, build_predictor("motifs", C_OBJ, C_PRED, DIM, hidden_dim=8, mode="sgcls").state_dict(),
                            path) is fits
    with pytest.raises(CheckpointError, match="weights do not fit") as err:
        load_predictor_state(fits, old_head.state_dict(), path)
    assert err.value.where == str(path) and "object_classifier" in err.value.problem


def test_sgcls_stage_trains_the_object_classifier_beside_the_predicates():
    """An SGCls model's stage gets the object CE (equal to F.cross_entropy of its object logits against the GT
    labels, logged per step); a PredCls model's does not, and the plugin refuses a model without object logits."""
    torch.manual_seed(0)
    model = build_predictor("mlp", C_OBJ, C_PRED, DIM, hidden_dim=8, dropout=0.0, mode="sgcls")
    plugins, _ = stage_plugins(model, {1: 5, 2: 3}, [1, 2], 0.9)
    assert [type(p) for p in plugins].count(ObjectClassification) == 1
    assert not any(isinstance(p, ObjectClassification) for p in stage_plugins(_model(), {1: 5}, [1], 0.9)[0])
    batch = next(_batches(np.array([0, 1, 2, -1, -1])))
    logits = model(batch)
    ctx = StepContext(batch=batch, logits=logits, model=model, step=1)
    (term,) = ObjectClassification().loss_terms(ctx)
    assert term.value.item() == pytest.approx(F.cross_entropy(model.object_logits, batch.labels).item())
    hist = train_stage(model, _batches(np.array([0, 1, 2, -1, -1])), plugins,
                       torch.optim.Adam(model.parameters(), 1e-2), 40, progress=False)
    assert all("loss_obj" in h for h in hist) and hist[-1]["loss_obj"] < 0.5 * hist[0]["loss_obj"]
    with pytest.raises(InputError, match="object_logits"):
        ObjectClassification().loss_terms(StepContext(batch=batch, logits=_model()(batch), model=_model(), step=1))


def test_sgdet_object_loss_learns_background_detections():
    """SGDet: detections assigned to no GT object carry label 0, which the object CE takes as a target (the
    classifier's background column); the same labels in an SGCls batch are refused as out of range."""
    torch.manual_seed(0)
    batch = next(_batches(np.array([0, 1, 2, -1, -1])))
    batch = dataclasses.replace(batch, labels=torch.where(torch.arange(len(batch.labels)) % 3 == 0, 0, batch.labels))
    assert (batch.labels == 0).any()
    det = build_predictor("mlp", C_OBJ, C_PRED, DIM, hidden_dim=8, dropout=0.0, mode="sgdet")
    plugins, _ = stage_plugins(det, {1: 5, 2: 3}, [1, 2], 0.9)
    assert [type(p) for p in plugins].count(ObjectClassification) == 1
    logits = det(batch)
    (term,) = ObjectClassification().loss_terms(StepContext(batch=batch, logits=logits, model=det, step=1))
    assert term.value.item() == pytest.approx(F.cross_entropy(det.object_logits, batch.labels).item())
    cls = build_predictor("mlp", C_OBJ, C_PRED, DIM, hidden_dim=8, dropout=0.0, mode="sgcls")
    with pytest.raises(InputError, match=r"labels in \[1, "):
        ObjectClassification().loss_terms(StepContext(batch=batch, logits=cls(batch), model=cls, step=1))
