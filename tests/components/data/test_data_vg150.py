"""VG-150 reader on a tiny dataset written in the real file formats: hand-checked values and bad inputs."""
import json

import h5py
import numpy as np
import pytest

from components.data import vg150
from components.errors import DataError

OBJ = ["man", "horse", "hat"]
PRED = ["on", "has"]
# 5 images: (split, boxes cx,cy,w,h at 1024, labels, global rels (sub, obj, pred)); image 3 has no boxes.
IMAGES = [
    (0, [[100, 200, 50, 100], [300, 300, 200, 100]], [1, 2], [(0, 1, 1)]),
    (0, [[10, 20, 20, 40], [500, 500, 100, 100], [50, 60, 10, 10]], [3, 1, 2], [(4, 2, 2), (2, 3, 1)]),
    (0, [[512, 512, 100, 100]], [1], []),
    (0, [], [], []),
    (2, [[200, 100, 40, 20], [600, 400, 80, 60]], [2, 3], [(7, 6, 2)]),
]
SIZES = [(800, 600), (1024, 768), (500, 1000), (640, 480), (2048, 1024)]


def write_vg(root, images=IMAGES, sizes=SIZES, extra_image_data=()):
    root.mkdir(parents=True, exist_ok=True)
    boxes, labels, rels, preds, fb, lb, fr, lr = [], [], [], [], [], [], [], []
    for _, bx, lab, rl in images:
        fb.append(len(boxes) if bx else -1)
        boxes += bx
        labels += lab
        lb.append(len(boxes) - 1 if bx else -1)
        fr.append(len(rels) if rl else -1)
        rels += [r[:2] for r in rl]
        preds += [r[2] for r in rl]
        lr.append(len(rels) - 1 if rl else -1)
    with h5py.File(root / vg150.H5_NAME, "w") as f:
        f["split"] = np.array([im[0] for im in images], dtype=np.int32)
        f["labels"] = np.array(labels, dtype=np.int64).reshape(-1, 1)
        f["boxes_1024"] = np.array(boxes, dtype=np.int32).reshape(-1, 4)
        f["boxes_512"] = (np.array(boxes, dtype=np.int32).reshape(-1, 4) // 2)
        f["img_to_first_box"], f["img_to_last_box"] = np.array(fb), np.array(lb)
        f["relationships"] = np.array(rels, dtype=np.int32).reshape(-1, 2)
        f["predicates"] = np.array(preds, dtype=np.int64).reshape(-1, 1)
        f["img_to_first_rel"], f["img_to_last_rel"] = np.array(fr), np.array(lr)
    dicts = {"label_to_idx": {n: i + 1 for i, n in enumerate(OBJ)},
             "idx_to_label": {str(i + 1): n for i, n in enumerate(OBJ)},
             "predicate_to_idx": {n: i + 1 for i, n in enumerate(PRED)},
             "idx_to_predicate": {str(i + 1): n for i, n in enumerate(PRED)}}
    (root / "VG-SGG-dicts-with-attri.json").write_text(json.dumps(dicts))
    data = [{"width": w, "height": h, "image_id": i + 10, "coco_id": None, "flickr_id": None,
             "url": f"https://cs.stanford.edu/people/rak248/VG_100K/{i + 10}.jpg"} for i, (w, h) in enumerate(sizes)]
    (root / "image_data.json").write_text(json.dumps(list(extra_image_data) + data))
    return root


def test_round_trip_boxes_rels_and_splits(tmp_path):
    root = write_vg(tmp_path / "vg")
    train, objs, preds = vg150.read_vg150(root, "train", num_val=1)
    val, _, _ = vg150.read_vg150(root, "val", num_val=1)
    test, _, _ = vg150.read_vg150(root, "test", num_val=1)
    assert objs == OBJ and preds == PRED
    # train images with boxes and relations: 0 and 1; the first one is val.
    assert [g["image_id"] for g in val] == ["10"] and [g["image_id"] for g in train] == ["11"]
    assert [g["image_id"] for g in test] == ["14"] and test[0]["split"] == "test"
    g = val[0]  # 800x600: scale 800/1024
    s = 800 / 1024
    np.testing.assert_allclose(g["boxes"][0], np.array([75, 150, 125, 250]) * s, rtol=1e-6)
    np.testing.assert_allclose(g["boxes"][1], np.array([200, 250, 400, 350]) * s, rtol=1e-6)
    np.testing.assert_array_equal(g["labels"], [1, 2])
    np.testing.assert_array_equal(g["rels"], [[0, 1, 1]])
    t = train[0]  # global rels (4,2,2),(2,3,1) with first box 2 -> local (2,0,2),(0,1,1)
    np.testing.assert_array_equal(t["rels"], [[2, 0, 2], [0, 1, 1]])
    np.testing.assert_array_equal(t["rel_fine"], [2, 1])
    np.testing.assert_array_equal(t["labels"], [3, 1, 2])
    assert t["width"] == 1024 and t["height"] == 768 and t["file_name"] == "11.jpg"
    te = test[0]  # 2048 long side: scale 2; global rel (7,6) with first box 6 -> (1,0)
    np.testing.assert_allclose(te["boxes"][1], [1120, 740, 1280, 860])
    np.testing.assert_array_equal(te["rels"], [[1, 0, 2]])


def test_keep_images_without_relations_and_other_box_scale(tmp_path):
    root = write_vg(tmp_path / "vg")
    train, _, _ = vg150.read_vg150(root, "train", num_val=1, filter_empty_rels=False)
    assert [g["image_id"] for g in train] == ["11", "12"]  # image 13 has no boxes: always dropped
    assert train[1]["rels"].shape == (0, 3)
    half, _, _ = vg150.read_vg150(root, "val", num_val=1, box_scale=512)
    full, _, _ = vg150.read_vg150(root, "val", num_val=1)
    np.testing.assert_allclose(half[0]["boxes"], full[0]["boxes"], atol=2)


def test_odd_integer_sizes_truncate_the_corner_as_the_benchmark_does(tmp_path):
    # load_graphs converts in the h5's int32 array: x1 = trunc(cx - w/2), x2 = x1 + w (not cx + w/2)
    images = [(0, [[100, 201, 51, 101], [300, 300, 200, 100]], [1, 2], [(0, 1, 1)])]
    root = write_vg(tmp_path / "vg", images=images, sizes=[(1024, 512)])
    train, _, _ = vg150.read_vg150(root, "train", num_val=0)
    np.testing.assert_array_equal(train[0]["boxes"][0], [74, 150, 125, 251])
    with h5py.File(root / vg150.H5_NAME, "a") as f:  # a float h5 keeps the half
        data = f["boxes_1024"][()].astype(np.float32)
        del f["boxes_1024"]
        f["boxes_1024"] = data
    train, _, _ = vg150.read_vg150(root, "train", num_val=0)
    np.testing.assert_array_equal(train[0]["boxes"][0], [74.5, 150.5, 125.5, 251.5])


def test_image_data_with_the_four_absent_ids_is_aligned(tmp_path):
    extra = [{"width": 1, "height": 1, "image_id": i, "url": ""} for i in sorted(vg150.CORRUPT_IMAGE_IDS)]
    root = write_vg(tmp_path / "vg", extra_image_data=extra)
    val, _, _ = vg150.read_vg150(root, "val", num_val=1)
    assert val[0]["image_id"] == "10" and val[0]["width"] == 800


def test_self_relations_are_dropped_and_counted(tmp_path):
    # Only pairs i != j are scored, so a relation of a box to itself can never be predicted. Image 10 has one
    # beside a valid relation; image 12's only relation is one (the image keeps its split, with no relation).
    images = [(0, IMAGES[0][1], IMAGES[0][2], [(0, 1, 1), (1, 1, 2)]), IMAGES[1],
              (0, [[512, 512, 100, 100]], [1], [(5, 5, 1)])]
    root = write_vg(tmp_path / "vg", images=images, sizes=SIZES[:3])
    train, _, _ = vg150.read_vg150(root, "train", num_val=0)
    assert [g["image_id"] for g in train] == ["10", "11", "12"]
    np.testing.assert_array_equal(train[0]["rels"], [[0, 1, 1]])
    np.testing.assert_array_equal(train[0]["rel_fine"], [1])
    np.testing.assert_array_equal(train[1]["rels"], [[2, 0, 2], [0, 1, 1]])
    assert train[2]["rels"].shape == (0, 3) and train[2]["rel_fine"].shape == (0,)
    assert [g["self_rels_dropped"] for g in train] == [1, 0, 1]


def _modify_h5(root, key, value):
    with h5py.File(root / vg150.H5_NAME, "a") as f:
        del f[key]
        if value is not None:
            f[key] = value


@pytest.mark.parametrize("breaker, message", [
    (lambda r: (r / vg150.H5_NAME).write_bytes((r / vg150.H5_NAME).read_bytes()[:300]), "unreadable HDF5"),
    (lambda r: (r / vg150.H5_NAME).unlink(), "VG-SGG-with-attri.h5: file missing"),
    (lambda r: (r / "image_data.json").unlink(), "image_data.json: file missing"),
    (lambda r: (r / "VG-SGG-dicts-with-attri.json").write_text("{\"idx_to_label\": "), "corrupt JSON"),
    (lambda r: _modify_h5(r, "predicates", None), r"missing keys \['predicates'\]"),
    (lambda r: _modify_h5(r, "labels", np.array([[1], [2], [3], [1], [2], [4], [2], [3]])), r"'labels'\[5\] = 4"),
    (lambda r: _modify_h5(r, "predicates", np.array([[1], [3], [1], [2]])), r"'predicates'\[1\] = 3"),
    (lambda r: _modify_h5(r, "relationships", np.array([[0, 1], [4, 2], [2, 5], [7, 6]])),
     r"relationships\[2\] = \[2, 5\] is outside image 1"),
    (lambda r: _modify_h5(r, "img_to_last_box", np.array([1, 4, 5, -1, 9])), "img_to_last_box=9"),
    (lambda r: (r / "image_data.json").write_text(json.dumps([{"width": 1, "height": 1, "image_id": 1}])),
     "1 images listed"),
])
def test_bad_inputs_give_one_clear_error(tmp_path, breaker, message):
    root = write_vg(tmp_path / "vg")
    breaker(root)
    with pytest.raises(DataError, match=message):
        for split in ("train", "val", "test"):
            vg150.read_vg150(root, split, num_val=1)


def test_missing_directory_and_unknown_split(tmp_path):
    with pytest.raises(DataError, match="VG-150 directory not found"):
        vg150.read_vg150(tmp_path / "nope", "train")
    with pytest.raises(DataError, match="unknown split 'dev'"):
        vg150.read_vg150(write_vg(tmp_path / "vg"), "dev")  # type: ignore[arg-type]


def test_image_path_finds_flat_and_nested_layouts(tmp_path):
    row = {"file_name": "11.jpg", "url": "https://x/VG_100K_2/11.jpg"}
    (tmp_path / "VG_100K_2").mkdir()
    (tmp_path / "VG_100K_2" / "11.jpg").write_bytes(b"x")
    assert vg150.image_path(tmp_path, row) == tmp_path / "VG_100K_2" / "11.jpg"
    (tmp_path / "11.jpg").write_bytes(b"x")
    assert vg150.image_path(tmp_path, row) == tmp_path / "11.jpg"
