"""COCO detection results as SGDet boxes: top-K per image by score, xywh -> xyxy, one clear error per bad file."""
import json

import numpy as np
import pytest

from components.data.coco_detections import read_coco_detections
from components.errors import DataError, InputError


def write(tmp_path, entries, name="dets.json"):
    path = tmp_path / name
    path.write_text(json.dumps(entries))
    return path


def det(image, x, score):
    return {"image_id": image, "category_id": 1, "bbox": [x, 10, 20, 30], "score": score}


def test_best_boxes_per_image_as_xyxy(tmp_path):
    path = write(tmp_path, [det(1, 0, 0.2), det(1, 5, 0.9), det("2", 7, 0.5), det(1, 9, 0.6), det(3, 1, 0.04)])
    got = read_coco_detections(path, max_per_image=2, min_score=0.05)
    assert set(got) == {"1", "2"}  # integer and string ids alike; image 3's only box is below the floor
    np.testing.assert_array_equal(got["1"], [[5, 10, 25, 40], [9, 10, 29, 40]])
    assert got["1"].dtype == np.float32 and got["2"].shape == (1, 4)
    assert set(read_coco_detections(path, image_ids={"2", "7"})) == {"2"}


@pytest.mark.parametrize("content, message", [
    ('{"image_id": 1}', "top level is dict"),
    ("[1, 2", "corrupt JSON"),
    ('[{"image_id": 1, "bbox": [0, 0, 5, 5]}]', "entry 0 is not a detection"),
    ('[{"image_id": 1, "bbox": [0, 0, 5], "score": 1}]', "entry 0 has bbox"),
    ('[{"image_id": 1, "bbox": [0, 0, 5, 0], "score": 1}]', "w, h > 0"),
    ('[{"image_id": 1, "bbox": [0, 0, 5, 5], "score": "high"}]', "entry 0 has score"),
    ('[{"image_id": 1, "bbox": [0, 0, 5, 5], "score": NaN}]', "entry 0 has score"),
])
def test_bad_files_name_the_entry(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as err:
        read_coco_detections(path)
    assert err.value.where == str(path)


def test_missing_file_and_bad_cap(tmp_path):
    with pytest.raises(DataError, match="detections file not found"):
        read_coco_detections(tmp_path / "none.json")
    with pytest.raises(InputError, match="max_per_image"):
        read_coco_detections(write(tmp_path, []), max_per_image=0)
