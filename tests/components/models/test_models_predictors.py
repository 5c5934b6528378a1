"""Every registered predictor: output shape, gradient flow, frequency bias use, and a tiny overfit."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from components.errors import ConfigError, InputError
from components.models.frequency import frequency_bias
from components.models.pairs import all_pairs, sample_pairs
from components.models.registry import PREDICTORS, build_predictor

N_OBJ, N_PRED, DIM = 6, 5, 8


def make_image(n: int, n_rels: int, seed: int) -> dict:
    r = np.random.default_rng(seed)
    xy = r.uniform(0, 60, (n, 2))
    boxes = np.concatenate([xy, xy + r.uniform(5, 40, (n, 2))], 1).astype(np.float32)
    labels = r.integers(1, N_OBJ + 1, n)
    pairs = r.permutation([(i, j) for i in range(n) for j in range(n) if i != j])[:n_rels]
    # Predicate is a function of the subject label, so it is learnable from the inputs.
    rels = np.array([(i, j, 1 + labels[i] % N_PRED) for i, j in pairs], dtype=np.int64).reshape(-1, 3)
    return {"image_id": str(seed), "split": "train", "width": 120, "height": 100, "boxes": boxes,
            "labels": labels, "obj_features": r.normal(size=(n, DIM)).astype(np.float32),
            "rels": rels, "rel_fine": rels[:, 2].copy()}


IMAGES = [make_image(4, 3, 0), make_image(7, 5, 1), make_image(2, 1, 2)]


def build(name: str, with_freq: bool = True):
    torch.manual_seed(0)
    fb = frequency_bias(IMAGES, N_OBJ, N_PRED) if with_freq else None
    return build_predictor(name, N_OBJ, N_PRED, DIM, freq_bias=fb, hidden_dim=16)


@pytest.mark.parametrize("name", PREDICTORS)
def test_shape_and_gradients(name):
    model = build(name)
    batch = sample_pairs(IMAGES, np.random.default_rng(0), max_bg_per_image=6)
    logits = model(batch)
    assert logits.shape == (len(batch.pairs), N_PRED + 1) and torch.isfinite(logits).all()
    assert model(all_pairs(IMAGES)).shape == (4 * 3 + 7 * 6 + 2, N_PRED + 1)
    torch.nn.functional.cross_entropy(logits, batch.pair_labels, ignore_index=-1).backward()
    names = [n for n, p in model.relation_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert names == [] or all("label_embed" in n or "freq_bias" in n for n in names), names


@pytest.mark.parametrize("name", PREDICTORS)
def test_output_does_not_depend_on_other_images(name):
    model = build(name).eval()
    alone = model(all_pairs(IMAGES[1:2]))
    together = model(all_pairs(IMAGES))
    assert torch.allclose(alone, together[12:12 + 42], atol=1e-5)


@pytest.mark.parametrize("name", PREDICTORS)
def test_tiny_overfit(name):
    model = build(name, with_freq=False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(60):
        batch = sample_pairs(IMAGES, rng, max_bg_per_image=4)
        loss = torch.nn.functional.cross_entropy(model(batch), batch.pair_labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.3 * np.mean(losses[:5]), losses[::10]


def test_frequency_bias_is_looked_up_by_subject_then_object_label():
    """Raising the bias of one (subject label s, object label o, predicate p) cell, s != o, shifts logit p
    of exactly the pairs with those labels in that order: a swapped lookup would shift the (o, s) pairs."""
    model = build("mlp").eval()
    batch = all_pairs(IMAGES)
    subj, obj = batch.labels[batch.pairs[:, 0]], batch.labels[batch.pairs[:, 1]]
    s, o = next((int(a), int(b)) for a, b in zip(subj, obj) if a != b)
    p = 2
    hit = (subj == s) & (obj == o)
    assert 0 < hit.sum() < len(hit)
    with torch.no_grad():
        before = model(batch)
        model.freq_bias.table.weight[s * model.freq_bias.num_labels + o, p] += 5.0
        shift = model(batch) - before
    want = torch.zeros_like(shift)
    want[hit, p] = 5.0
    assert torch.allclose(shift, want, atol=1e-4)


def test_registry_errors():
    with pytest.raises(ConfigError, match="unknown predictor"):
        build_predictor("nope", N_OBJ, N_PRED, DIM)
    with pytest.raises(ConfigError, match=r"predictor 'mlp' options: unknown options \['bogus'\] "
                                          r"\(expected options among \['dropout', 'embed_dim'\]\)"):
        build_predictor("mlp", N_OBJ, N_PRED, DIM, bogus=1)
    with pytest.raises(ConfigError, match=r"unknown options \['num_layers'\]"):  # a transformer-only option
        build_predictor("gnn", N_OBJ, N_PRED, DIM, num_layers=3)
    with pytest.raises(InputError, match="freq_bias"):
        build_predictor("mlp", N_OBJ, N_PRED, DIM, freq_bias=np.zeros((2, 2, 2)))
    model = build_predictor("mlp", N_OBJ, N_PRED, DIM + 1)
    with pytest.raises(InputError, match="feature dim"):
        model(all_pairs(IMAGES))
    model = build_predictor("mlp", N_OBJ - 1, N_PRED, DIM)
    with pytest.raises(InputError, match="label out of range"):
        model(all_pairs([dict(IMAGES[0], labels=np.array([1, 2, 3, N_OBJ]))]))


def test_type_error_inside_a_builder_is_not_reported_as_an_unknown_option():
    # embed_dim is an accepted option; a float makes torch raise TypeError inside the builder, which must
    # surface as it is rather than as "options the predictor accepts".
    with pytest.raises(TypeError, match="tuple of ints"):
        build_predictor("mlp", N_OBJ, N_PRED, DIM, embed_dim=8.5)
    model = build_predictor("transformer", N_OBJ, N_PRED, DIM, hidden_dim=16, num_layers=1, num_heads=2)
    assert model.build_spec["num_layers"] == 1 and model.build_spec["num_heads"] == 2


@pytest.mark.parametrize("name", PREDICTORS)
def test_invariant_to_object_order(name):
    # Objects are sets: permuting an image's objects (and remapping its relations) permutes nothing else.
    model = build(name).eval()
    img = IMAGES[1]
    perm = np.random.default_rng(3).permutation(len(img["labels"]))
    inv = np.argsort(perm)
    shuffled = dict(img, boxes=img["boxes"][perm], labels=img["labels"][perm],
                    obj_features=img["obj_features"][perm],
                    rels=np.stack([inv[img["rels"][:, 0]], inv[img["rels"][:, 1]], img["rels"][:, 2]], 1))
    a, b = all_pairs([img]), all_pairs([shuffled])
    la, lb = model(a), model(b)
    index_b = {tuple(p): k for k, p in enumerate(b.pairs.tolist())}
    rows = [index_b[(int(inv[s]), int(inv[o]))] for s, o in a.pairs.tolist()]
    assert torch.allclose(la, lb[rows], atol=1e-5)
    assert torch.equal(a.pair_labels, b.pair_labels[rows])


@pytest.mark.parametrize("name", PREDICTORS)
def test_images_with_zero_or_one_object(name):
    model = build(name)
    empty = dict(IMAGES[0], boxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64),
                 obj_features=np.zeros((0, DIM), np.float32), rels=np.zeros((0, 3), np.int64))
    single = dict(empty, boxes=IMAGES[0]["boxes"][:1], labels=IMAGES[0]["labels"][:1],
                  obj_features=IMAGES[0]["obj_features"][:1])
    assert model(all_pairs([empty, single])).shape == (0, N_PRED + 1)
    assert model(all_pairs([empty, single, IMAGES[2]])).shape == (2, N_PRED + 1)


@pytest.mark.parametrize("name", PREDICTORS)
def test_batch_geometry_is_computed_once_and_shared_by_two_models(name, monkeypatch):
    """HML stage 2 runs the frozen and the new model on one batch: box geometry is derived once for both,
    and a model on the shared batch gives what it gives on a fresh copy (nothing stale, nothing mutated)."""
    import dataclasses

    from components.models import common, geometry

    calls = []
    real = geometry.pair_geometry

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(common, "pair_geometry", counting)
    first, second = build(name).eval(), build(name).eval()
    torch.manual_seed(5)
    with torch.no_grad():
        for p in second.parameters():
            p.add_(0.1 * torch.randn_like(p))  # a different model on the same batch
    batch = sample_pairs(IMAGES, np.random.default_rng(0), max_bg_per_image=6)
    first(batch)
    n_first = len(calls)
    shared = second(batch)
    assert n_first >= 1 and len(calls) == n_first  # the second model reused the first one's pair geometry
    fresh = dataclasses.replace(batch)  # same tensors, no derived values
    torch.testing.assert_close(shared, second(fresh))
    assert len(calls) == n_first + 1


def build_sgcls(name: str):
    torch.manual_seed(0)
    return build_predictor(name, N_OBJ, N_PRED, DIM, freq_bias=frequency_bias(IMAGES, N_OBJ, N_PRED),
                           hidden_dim=16, mode="sgcls")


def relabelled(images: list[dict]) -> list[dict]:
    """The same images with every object given another GT label."""
    return [dict(img, labels=img["labels"] % N_OBJ + 1) for img in images]


@pytest.mark.parametrize("name", PREDICTORS)
def test_sgcls_predicts_object_labels_and_never_reads_the_gt_ones(name):
    """SGCls: object logits (N, C+1) set by forward, and neither they nor the relation logits change when the
    GT labels do; in PredCls the same relabelling changes the relation logits (the check can fail)."""
    model = build_sgcls(name).eval()
    batch, other = all_pairs(IMAGES), all_pairs(relabelled(IMAGES))
    with torch.no_grad():
        rel, obj = model(batch), model.object_logits
        rel2, obj2 = model(other), model.object_logits
    assert obj.shape == (13, N_OBJ + 1) and rel.shape == (4 * 3 + 7 * 6 + 2, N_PRED + 1)
    assert torch.equal(rel, rel2) and torch.equal(obj, obj2)
    predcls = build(name).eval()
    with torch.no_grad():
        assert not torch.allclose(predcls(batch), predcls(other))
    assert predcls.object_logits is None and "mode" not in predcls.build_spec
    assert model.build_spec["mode"] == "sgcls"


@pytest.mark.parametrize("name", PREDICTORS)
def test_sgcls_frequency_bias_follows_the_predicted_labels(name):
    """The bias row looked up for a pair is that of the predicted (subject, object) labels: raising the bias of
    the predicted labels' cell raises exactly the pairs with those predicted labels."""
    model = build_sgcls(name).eval()
    batch = all_pairs(IMAGES)
    with torch.no_grad():
        before = model(batch)
        pred = model.object_logits[:, 1:].argmax(1) + 1
        s, o = pred[batch.pairs[0, 0]], pred[batch.pairs[0, 1]]
        model.freq_bias.table.weight[s * (N_OBJ + 1) + o, 2] += 5.0
        delta = model(batch) - before
    hit = (pred[batch.pairs[:, 0]] == s) & (pred[batch.pairs[:, 1]] == o)
    assert torch.allclose(delta[hit, 2], torch.full((int(hit.sum()),), 5.0), atol=1e-4)
    assert torch.allclose(delta[~hit], torch.zeros_like(delta[~hit]), atol=1e-5)
    assert torch.allclose(delta[:, [0, 1, 3, 4, 5]], torch.zeros_like(delta[:, [0, 1, 3, 4, 5]]), atol=1e-5)


def train_object_head(model, batch, steps: int):
    """`model` trained `steps` Adam steps on the object cross-entropy alone over `batch`, returned in eval mode."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        model(batch)
        loss = torch.nn.functional.cross_entropy(model.object_logits, batch.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_sgcls_object_head_learns_and_the_mode_is_checked():
    """Trained on the object CE alone, the object classifier learns labels that are a function of the
    features; an unknown mode is refused."""
    images = [dict(img, obj_features=np.eye(N_OBJ + 1, DIM, dtype=np.float32)[img["labels"]] * 3.0)
              for img in IMAGES]
    batch = all_pairs(images)
    model = train_object_head(build_sgcls("mlp"), batch, 100)
    with torch.no_grad():
        model(batch)
    assert torch.equal(model.object_logits[:, 1:].argmax(1) + 1, batch.labels)
    with pytest.raises(ConfigError, match="mode"):
        build_predictor("mlp", N_OBJ, N_PRED, DIM, mode="detcls")


def paired_images(n: int, seed: int) -> list[dict]:
    """Two-object images: the left object's feature shows its label, the right one's is noise, and both
    objects share the label, so the right object's label can only come from its image context."""
    r = np.random.default_rng(seed)
    images = []
    for i in range(n):
        label = int(r.integers(1, N_OBJ + 1))
        feats = np.stack([np.eye(DIM, dtype=np.float32)[label] * 3.0, r.normal(size=DIM).astype(np.float32)])
        boxes = np.array([[5, 10, 30, 50], [60, 10, 90, 50]], dtype=np.float32) + r.uniform(0, 5, (2, 1))
        rels = np.array([[0, 1, 1]], dtype=np.int64)
        images.append({"image_id": f"p{i}", "split": "train", "width": 120, "height": 100, "boxes": boxes,
                       "labels": np.array([label, label]), "obj_features": feats, "rels": rels,
                       "rel_fine": rels[:, 2].copy()})
    return images


@pytest.mark.parametrize("name", PREDICTORS)
def test_sgcls_objects_are_classified_in_their_image_context(name):
    """Trained on the object CE alone, a context model (MOTIFS' object LSTM, the transformer, the GNN) labels the
    featureless right object from its left neighbour on new images; the context-free MLP cannot (chance)."""
    train, test = all_pairs(paired_images(48, 0)), all_pairs(paired_images(48, 1))
    model = train_object_head(build_sgcls(name), train, 150)
    with torch.no_grad():
        model(test)
    right = torch.arange(1, len(test.labels), 2)
    acc = float((model.object_logits[right, 1:].argmax(1) + 1 == test.labels[right]).float().mean())
    if name == "mlp":
        assert acc < 0.4  # chance is 1/6
    else:
        assert acc > 0.75


def test_sgcls_model_copies_after_a_training_forward():
    """The last forward's object logits (holding their autograd graph) are not model state: a copy made right
    after a training forward works (as when a trained model becomes a frozen teacher) and predicts the same."""
    import copy
    import pickle

    model = build_sgcls("motifs")
    model(all_pairs(IMAGES))
    assert model.object_logits is not None and model.object_logits.requires_grad
    clone = copy.deepcopy(model).eval()
    assert clone.object_logits is None and model.object_logits is not None
    again = pickle.loads(pickle.dumps(model)).eval()
    model.eval()
    with torch.no_grad():
        batch = all_pairs(IMAGES)
        assert torch.equal(model(batch), clone(batch)) and torch.equal(model(batch), again(batch))
        assert torch.equal(model.object_logits, clone.object_logits)


def test_concat_pair_head_is_the_layer_on_the_concatenation():
    """The factorised pair head (object blocks per object, geometry per pair) computes the first layer on
    [subject, object, geometry] with the same parameters: outputs and every gradient agree to float rounding."""
    from components.models.common import ConcatPairHead

    torch.manual_seed(0)
    head = ConcatPairHead(24, 16, dropout=0.0)
    ctx = torch.randn(11, 24, requires_grad=True)
    geo = torch.randn(40, 16, requires_grad=True)
    pairs = torch.randint(0, 11, (40, 2))
    out = head(ctx, pairs, geo)
    ref = head.net(torch.cat([ctx[pairs[:, 0]], ctx[pairs[:, 1]], geo], 1))
    assert out.shape == (40, 16) and torch.allclose(out, ref, atol=1e-5) and (ref > 0).any()
    grads = torch.autograd.grad(out.square().sum(), [ctx, geo, *head.parameters()])
    ref_grads = torch.autograd.grad(ref.square().sum(), [ctx, geo, *head.parameters()])
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-4, rtol=1e-4)
    assert [n for n, _ in head.named_parameters()] == ["net.0.weight", "net.0.bias"]  # checkpoints still load
