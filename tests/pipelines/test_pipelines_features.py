"""Feature stage on tiny real-format VG-150 and GQA-LT data with PNG images (small random-init backbone)."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from components.config import from_dict
from components.data import vg150
from components.data.detector import BoxFeatureExtractor, DetectorConfig
from components.data.store import FeatureStore, relation_arrays, scene_graphs
from components.errors import DataError
from pipelines.features import FeaturesConfig, write_features

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "components" / "data"))
from test_data_gqa import write_gqa
from test_data_vg150 import IMAGES, SIZES, write_vg

pytestmark = pytest.mark.ray
DET = {"backbone": "resnet18_fpn", "allow_random_init": True, "hidden_dim": 32, "feature_dim": 8, "min_side": 48, "max_side": 64}


def png(path, w, h, seed):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)  # blocky image: cheap to write at any size
    Image.fromarray(small).resize((w, h), Image.NEAREST).save(path, format="PNG")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "extractor.pth"
    torch.save(BoxFeatureExtractor(DetectorConfig(**DET), seed=7).state_dict(), path)
    return str(path)


def cfg(tmp_path, dataset, data, images, checkpoint, **kw):
    return from_dict(FeaturesConfig, {"dataset": dataset, "data": str(data), "images": str(images),
                                      "out": str(tmp_path / "store"), "num_val": 1, "dtype": "float32",
                                      "detector": {**DET, "checkpoint": checkpoint, "allow_random_init": False},
                                      "actors": 2, "cpus_per_actor": 0.25, "images_per_call": 1, "shard_rows": 2, **kw})


def test_vg150_scene_graph_store(ray_local, tmp_path, checkpoint):
    split, boxes, labels, rels = IMAGES[0]  # plus a relation of box 0 to itself: dropped and counted
    data = write_vg(tmp_path / "vg", images=[(split, boxes, labels, [*rels, (0, 0, 1)]), *IMAGES[1:]])
    (tmp_path / "img" / "VG_100K").mkdir(parents=True)
    for i, (w, h) in enumerate(SIZES):  # nested layout, as in the VG download; image 11 at half size
        scale = 2 if i == 1 else 1
        png(tmp_path / "img" / "VG_100K" / f"{i + 10}.jpg", w // scale, h // scale, i)
    store = FeatureStore(write_features(cfg(tmp_path, "vg150", data, tmp_path / "img", checkpoint)))
    assert store.manifest.kind == "scene_graph" and store.manifest.objects == ["man", "horse", "hat"]
    assert store.manifest.meta["detector_loaded_parts"] == {"backbone": "checkpoint", "fpn": "checkpoint",
                                                            "head": "checkpoint"}
    reader = store.manifest.meta["reader"]
    assert set(reader) == {"train", "val", "test"}
    assert sum(r["self_relations_dropped"] for r in reader.values()) == 1
    model = BoxFeatureExtractor(DetectorConfig(**DET, checkpoint=checkpoint))
    for split in ("train", "val", "test"):
        want, _, _ = vg150.read_vg150(data, split, num_val=1)
        got = list(scene_graphs(store.read(split)))
        assert [g["image_id"] for g in got] == [w["image_id"] for w in want]
        for g, w in zip(got, want):
            np.testing.assert_allclose(g["boxes"], w["boxes"], rtol=1e-6)
            np.testing.assert_array_equal(g["rels"], w["rels"])
            img = np.asarray(Image.open(tmp_path / "img" / "VG_100K" / w["file_name"]).convert("RGB"))
            s = img.shape[1] / w["width"]  # boxes are in annotation pixels; image 11 is stored at half size
            direct, _ = model.extract(img, w["boxes"] * s)
            np.testing.assert_allclose(g["obj_features"], direct, rtol=1e-4, atol=1e-5)


def test_vg150_store_with_detections(ray_local, tmp_path, checkpoint):
    """detections=FILE (COCO results): each image's best boxes above the score floor, best first, with RoI
    features equal to a direct extraction; images the detector missed hold none and are counted per split."""
    import json

    data = write_vg(tmp_path / "vg")
    (tmp_path / "img").mkdir()
    for i, (w, h) in enumerate(SIZES):
        png(tmp_path / "img" / f"{i + 10}.jpg", w, h, i)
    results = [{"image_id": 10, "category_id": 1, "bbox": [10, 20, 100, 50], "score": 0.3},
               {"image_id": 10, "category_id": 2, "bbox": [200, 100, 40, 40], "score": 0.9},
               {"image_id": 10, "category_id": 2, "bbox": [0, 0, 30, 30], "score": 0.01},  # below the floor
               *({"image_id": 11, "category_id": 3, "bbox": [5 * k, 5, 50, 60], "score": 0.5 - 0.01 * k} for k in range(5)),
               {"image_id": 999, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9}]  # not in the data
    (tmp_path / "dets.json").write_text(json.dumps(results))
    c = cfg(tmp_path, "vg150", data, tmp_path / "img", checkpoint, detections=str(tmp_path / "dets.json"),
            max_detections=3, min_detection_score=0.05)
    store = FeatureStore(write_features(c))
    assert store.manifest.detections
    got = {g["image_id"]: g for split in ("train", "val", "test") for g in scene_graphs(store.read(split))}
    np.testing.assert_array_equal(got["10"]["det_boxes"], [[200, 100, 240, 140], [10, 20, 110, 70]])
    np.testing.assert_array_equal(got["11"]["det_boxes"], [[0, 5, 50, 65], [5, 5, 55, 65], [10, 5, 60, 65]])
    assert got["14"]["det_boxes"].shape == (0, 4) and got["14"]["det_features"].shape == (0, 8)
    assert store.manifest.meta["reader"]["test"]["images_without_detections"] == 1
    model = BoxFeatureExtractor(DetectorConfig(**DET, checkpoint=checkpoint))
    img = np.asarray(Image.open(tmp_path / "img" / "10.jpg").convert("RGB"))
    direct, _ = model.extract(img, np.concatenate([got["10"]["boxes"], got["10"]["det_boxes"]]))
    np.testing.assert_allclose(got["10"]["det_features"], direct[len(got["10"]["boxes"]):], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["10"]["obj_features"], direct[:len(got["10"]["boxes"])], rtol=1e-4, atol=1e-5)


def test_gqa_relation_store_and_missing_image(ray_local, tmp_path, checkpoint):
    data = write_gqa(tmp_path / "gqa")
    (tmp_path / "img").mkdir()
    for i, name in enumerate(["1.jpg", "2.jpg", "3.jpg"]):
        png(tmp_path / "img" / name, 120, 100, i)
    c = cfg(tmp_path, "gqa_lt", data, tmp_path / "img", checkpoint, splits=["train", "test"], actors=1)
    store = FeatureStore(write_features(c))
    arr = relation_arrays(store.read("train"))
    np.testing.assert_array_equal(arr["sample_id"], [0, 1, 2])
    np.testing.assert_array_equal(arr["subject_box"][0], [20, 10, 40, 50])
    np.testing.assert_array_equal(arr["predicate"], [2, 1, 0])
    # samples 0 and 1 share the subject box in image 1.jpg: identical subject features
    np.testing.assert_allclose(arr["subject_feature"][0], arr["subject_feature"][1], atol=1e-6)
    model = BoxFeatureExtractor(DetectorConfig(**DET, checkpoint=checkpoint))
    img = np.asarray(Image.open(tmp_path / "img" / "1.jpg").convert("RGB"))
    _, union = model.extract(img, np.stack([arr["subject_box"][1], arr["object_box"][1]]), np.array([[0, 1]]))
    np.testing.assert_allclose(arr["union_feature"][1], union[0], rtol=1e-4, atol=1e-5)
    assert store.manifest.rows("test") == 1
    (tmp_path / "img" / "3.jpg").unlink()
    with pytest.raises(DataError, match=r"3.jpg: image file missing \(1 of 3 images missing\)"):
        write_features(c)
    (tmp_path / "img" / "3.jpg").write_bytes(b"\x89PNG truncated")
    with pytest.raises(DataError, match="3.jpg: unreadable image") as err:
        write_features(c)
    assert type(err.value) is DataError and str(err.value).startswith(str(tmp_path / "img" / "3.jpg"))  # the reader's own
    assert FeatureStore(tmp_path / "store").manifest.rows("train") == 3  # the old store is untouched


def test_feature_actor_uses_its_cpu_share_as_threads(checkpoint):
    """An actor given c CPUs computes on round(c) torch threads (at least one); it was pinned to one thread
    whatever its share, so a 4-CPU actor ran the detector on a single core."""
    from pipelines.features import FeatureActor
    from pipelines.ray_runtime import actor_threads

    assert [actor_threads(FeaturesConfig(cpus_per_actor=c).cpus_per_actor) for c in (0.25, 1.0, 2.4, 4.0)] == [1, 1, 2, 4]
    before = torch.get_num_threads()
    try:
        actor = FeatureActor({**DET, "checkpoint": checkpoint, "allow_random_init": False}, "scene_graph",
                             "float32", threads=2, device="cpu")
        assert torch.get_num_threads() == 2 and actor.model.mean.device.type == "cpu"
    finally:
        torch.set_num_threads(before)


def test_detections_are_refused_for_relation_samples():
    from components.errors import ConfigError

    with pytest.raises(ConfigError, match="detections only with --dataset vg150"):
        from_dict(FeaturesConfig, {"dataset": "gqa_lt", "data": "d", "images": "i", "out": "o", "detections": "x.json"})
