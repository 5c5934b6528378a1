"""sgg-planted-det's simulated detector: deterministic per image, leaves the GT alone, hits and misses by IoU."""
import numpy as np

from components.data.planted_detections import PlantedDetectionConfig, simulate_detections
from components.data.planted_sgg import PlantedSGGConfig, build_world, generate_image
from components.evaluation.sgg import box_iou

CFG = PlantedSGGConfig(n_train=40, feature_dim=8)
WORLD = build_world(CFG)


def _images(n=40):
    return [generate_image(WORLD, CFG, "train", i) for i in range(n)]


def _detect(det_cfg, images):
    return [simulate_detections(img, WORLD, det_cfg, CFG.object_noise, CFG.seed, i) for i, img in enumerate(images)]


def test_deterministic_per_image_and_gt_untouched():
    images = _images(5)
    a, b = _detect(PlantedDetectionConfig(), images), _detect(PlantedDetectionConfig(), images)
    for img, x, y in zip(images, a, b):
        np.testing.assert_array_equal(x["det_boxes"], y["det_boxes"])
        np.testing.assert_array_equal(x["det_features"], y["det_features"])
        for k, v in img.items():
            np.testing.assert_array_equal(x[k], v)
        assert x["det_features"].shape == (len(x["det_boxes"]), 8)
        assert (x["det_boxes"][:, :2] >= 0).all() and (x["det_boxes"][:, 2] <= img["width"]).all()
    other = simulate_detections(images[0], WORLD, PlantedDetectionConfig(), CFG.object_noise, CFG.seed, 1)
    assert not np.array_equal(other["det_boxes"][:3], a[0]["det_boxes"][:3])


def test_a_perfect_detector_hits_every_object_once():
    images = _images()
    for img, d in zip(images, _detect(PlantedDetectionConfig(recall=1.0, false_positives=0.0), images)):
        iou = box_iou(img["boxes"].astype(np.float64), d["det_boxes"].astype(np.float64))
        assert len(d["det_boxes"]) == len(img["boxes"])
        assert (iou.max(1) >= 0.5).all()


def test_misses_never_match_and_clutter_follows_its_rate():
    one = {"image_id": "train-0", "split": "train", "width": 100, "height": 100,
           "boxes": np.array([[30, 30, 59, 59]], np.float32), "obj_features": np.zeros((1, 8), np.float32)}
    cfg = PlantedDetectionConfig(recall=0.0, mislocalised=1.0, false_positives=0.0)
    found = [simulate_detections(one, WORLD, cfg, CFG.object_noise, CFG.seed, i)["det_boxes"] for i in range(200)]
    assert sum(len(d) for d in found) > 150  # mislocalised boxes, not dropped ones (a few clip back onto it)
    assert all(box_iou(one["boxes"].astype(np.float64), d.astype(np.float64)).max(initial=0.0) < 0.5 for d in found)
    images = _images()
    clutter = _detect(PlantedDetectionConfig(recall=0.0, mislocalised=0.0, false_positives=2.0), images)
    n_obj, n_det = sum(len(i["boxes"]) for i in images), sum(len(d["det_boxes"]) for d in clutter)
    assert abs(n_det / n_obj - 2.0) < 0.25  # Poisson(2 x objects) per image
