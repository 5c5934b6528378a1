"""Classifier losses by hand (WCE, VilHub, RelMix), and a tiny train -> fine-tune -> evaluate run."""
import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from components.diffaug.finetune import (
    RelationSet,
    TrainConfig,
    evaluate_classifier,
    finetune_classifier,
    predict_logits,
    train_classifier,
)
from components.diffaug.losses import relmix_loss, vilhub_loss, wce_weights
from components.evaluation.ltvrr import ltvrr_report
from components.evaluation.predictions import load_ltvrr_predictions
from components.models.vrr_classifier import VRRClassifier


def test_wce_weights_by_hand():
    w = wce_weights(np.array([9, 1, 0]))  # f = 10, 2, 1; sum 13 -> 1.3, 6.5, 13; mean 6.9333
    raw = np.array([1.3, 6.5, 13.0])
    assert np.allclose(w.numpy(), raw / raw.mean())
    assert w.mean().item() == pytest.approx(1.0)


def test_vilhub_by_hand():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7]]))
    # batch-mean softmax = (0.4, 0.2, 0.4); squared gaps to 1/3: (1/15)^2, (2/15)^2, (1/15)^2
    want = ((1 / 15) ** 2 + (2 / 15) ** 2 + (1 / 15) ** 2) / 3 * 5.0
    assert vilhub_loss(logits, 5.0).item() == pytest.approx(want, rel=1e-5)
    assert vilhub_loss(torch.zeros(4, 3)).item() == pytest.approx(0.0, abs=1e-12)


def test_relmix_zero_without_partners_and_bounded():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    m = VRRClassifier(4, rng.normal(size=(3, 4)), rng.normal(size=(3, 4)), embed_dim=4, hidden=4)
    emb = torch.randn(4, 4)
    labels = torch.tensor([0, 1, 2, 2])
    g = torch.Generator().manual_seed(0)
    assert relmix_loss(m, emb, labels, torch.zeros(4, dtype=torch.bool), g).item() == 0.0
    is_tail = torch.tensor([True, True, False, False])
    assert torch.isfinite(relmix_loss(m, emb, labels, is_tail, g))
    # mixing identical embeddings with identical labels is plain CE, whatever lambda is drawn
    same = emb[:1].expand(4, 4)
    ones = torch.ones(4, dtype=torch.long)
    want = F.cross_entropy(m.logits_from(same[:1], "relation"), ones[:1])
    assert relmix_loss(m, same, ones, is_tail, g).item() == pytest.approx(want.item(), rel=1e-5)


def planted(n, rng, protos_o, protos_p, d):
    s, o, p = rng.integers(0, len(protos_o), n), rng.integers(0, len(protos_o), n), rng.integers(0, len(protos_p), n)
    noise = lambda: rng.normal(0, 0.5, (n, d)).astype(np.float32)
    return RelationSet(protos_o[s] + noise(), protos_o[o] + noise(), protos_p[p] + noise(), s, o, p,
                       rng.random((n, 5)).astype(np.float32))


def test_train_finetune_evaluate_tiny(tmp_path):
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    d = 12
    po, pp = rng.normal(size=(6, d)).astype(np.float32), rng.normal(size=(4, d)).astype(np.float32)
    train, test = planted(400, rng, po, pp, d), planted(200, rng, po, pp, d)
    oc = np.bincount(np.concatenate([train.subject, train.object]), minlength=6)
    rc = np.bincount(train.predicate, minlength=4)

    ov, pv = rng.normal(size=(6, 5)), rng.normal(size=(4, 5))

    def run(seed):
        torch.manual_seed(seed)
        m = VRRClassifier(d, ov, pv, embed_dim=16, hidden=32, dropout=0.0)
        hist = train_classifier(m, train, TrainConfig(epochs=15, batch_size=64, lr=3e-3, loss="wce", vilhub=0.1,
                                                      relmix=True, seed=seed), oc, rc)
        return m, hist

    m, hist = run(0)
    assert hist[-1] < hist[0]
    rep = evaluate_classifier(m, test, oc, rc, predictions=tmp_path / "preds.npz")
    rescored = ltvrr_report(**load_ltvrr_predictions(tmp_path / "preds.npz"))  # saved for re-scoring
    assert json.dumps(rescored, sort_keys=True) == json.dumps(rep, sort_keys=True)  # NaN (empty band) included
    assert rep["rel"]["all"] > 80 and rep["sbj_obj"]["all"] > 80  # well separated prototypes
    assert rep["combined"] == pytest.approx((rep["sbj_obj"]["all"] + rep["rel"]["all"]) / 2)
    before = predict_logits(m, test)["relation"]
    ft = finetune_classifier(m, train.subset(np.arange(100)), oc, rc, epochs=2, batch_size=32, curriculum=True)
    assert len(ft) == 2 and not np.allclose(before, predict_logits(m, test)["relation"])
    a = predict_logits(run(3)[0], test)["relation"]
    b = predict_logits(run(3)[0], test)["relation"]
    assert np.allclose(a, b)  # deterministic by seed
