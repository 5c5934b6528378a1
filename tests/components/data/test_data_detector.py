"""RoI feature extractor: shapes, union-box invariants, checkpoint formats and refusals (random-init resnet18)."""
import numpy as np
import pytest
import torch
import torchvision

from components.data.detector import BoxFeatureExtractor, DetectorConfig, _map_keys
from components.errors import CheckpointError, ConfigError, DataError

SMALL = {"backbone": "resnet18_fpn", "allow_random_init": True, "hidden_dim": 32, "feature_dim": 16, "min_side": 64, "max_side": 96}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return BoxFeatureExtractor(DetectorConfig(**SMALL))


def image(h=60, w=80, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_shapes_and_union_of_a_box_with_itself(model):
    boxes = np.array([[5, 5, 30, 40], [20, 10, 70, 55], [0, 0, 80, 60]], dtype=np.float32)
    obj, uni = model.extract(image(), boxes, np.array([[0, 0], [0, 1], [1, 0]]))
    assert obj.shape == (3, 16) and uni.shape == (3, 16) and obj.dtype == np.float32
    np.testing.assert_allclose(uni[0], obj[0], atol=1e-5)  # union(b, b) = b
    np.testing.assert_allclose(uni[1], uni[2], atol=1e-5)  # union is symmetric
    # union of boxes 0 and 1 is [5, 5, 70, 55]: same as extracting that box directly
    direct, _ = model.extract(image(), np.array([[5, 5, 70, 55]]))
    np.testing.assert_allclose(uni[1], direct[0], atol=1e-5)
    assert np.isfinite(obj).all() and not np.allclose(obj[0], obj[1])


def test_random_init_is_the_same_in_every_process(model):
    b = np.array([[10, 10, 50, 50]])
    torch.manual_seed(123)  # the global RNG state must not matter
    again = BoxFeatureExtractor(DetectorConfig(**SMALL))
    np.testing.assert_array_equal(again.extract(image(), b)[0], model.extract(image(), b)[0])


def test_features_depend_on_image_content_and_no_boxes(model):
    b = np.array([[10, 10, 50, 50]])
    assert not np.allclose(model.extract(image(seed=1), b)[0], model.extract(image(seed=2), b)[0])
    obj, uni = model.extract(image(), np.zeros((0, 4)))
    assert obj.shape == (0, 16) and uni.shape == (0, 16)
    with pytest.raises(DataError, match="index outside the boxes"):
        model.extract(image(), b, np.array([[0, 1]]))


def test_own_checkpoint_round_trip(model, tmp_path):
    torch.save(model.state_dict(), tmp_path / "ext.pth")
    other = BoxFeatureExtractor(DetectorConfig(**{**SMALL, "checkpoint": str(tmp_path / "ext.pth")}))
    assert other.loaded_parts == {"backbone": "checkpoint", "fpn": "checkpoint", "head": "checkpoint"}
    b = np.array([[10, 10, 50, 50]])
    np.testing.assert_allclose(other.extract(image(), b)[0], model.extract(image(), b)[0], atol=1e-6)


def test_imagenet_classifier_fills_only_the_trunk(tmp_path):
    trunk = torchvision.models.resnet18(weights=None)
    torch.save(trunk.state_dict(), tmp_path / "resnet18.pth")
    m = BoxFeatureExtractor(DetectorConfig(**{**SMALL, "checkpoint": str(tmp_path / "resnet18.pth")}))
    assert m.loaded_parts == {"backbone": "checkpoint", "fpn": "random", "head": "random"}
    torch.testing.assert_close(m.backbone.body.layer3[0].conv1.weight, trunk.layer3[0].conv1.weight)


def test_faster_rcnn_and_vgg_key_mapping():
    t = torch.zeros(1)
    frcnn = {"backbone.body.conv1.weight": t, "roi_heads.box_head.fc6.weight": t, "rpn.head.conv.weight": t,
             "roi_heads.box_predictor.cls_score.weight": t}
    assert set(_map_keys(frcnn, "resnet50_fpn")) == {"backbone.body.conv1.weight", "head.fc6.weight"}
    vgg = {"features.0.weight": t, "features.28.bias": t, "classifier.0.weight": t, "classifier.3.bias": t,
           "classifier.6.weight": t}
    assert set(_map_keys(vgg, "vgg16")) == {"backbone.0.weight", "backbone.28.bias", "head.fc6.weight",
                                            "head.fc7.bias"}


def test_vgg16_backbone_runs():
    m = BoxFeatureExtractor(DetectorConfig(**{**SMALL, "backbone": "vgg16"}))
    obj, uni = m.extract(image(), np.array([[0, 0, 40, 40], [30, 20, 80, 60]]), np.array([[0, 1]]))
    assert obj.shape == (2, 16) and uni.shape == (1, 16)


def test_refusals(tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint given"):
        BoxFeatureExtractor(DetectorConfig(backbone="resnet18_fpn"))
    with pytest.raises(CheckpointError, match="not found"):
        BoxFeatureExtractor(DetectorConfig(**{**SMALL, "checkpoint": str(tmp_path / "none.pth")}))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable weights file"):
        BoxFeatureExtractor(DetectorConfig(**{**SMALL, "checkpoint": str(tmp_path / "junk.pth")}))
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(CheckpointError, match="keys/shapes not matching resnet50_fpn"):
        BoxFeatureExtractor(DetectorConfig(**{**SMALL, "backbone": "resnet50_fpn", "checkpoint": str(tmp_path / "r18.pth")}))
