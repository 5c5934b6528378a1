"""SGDet's assignment of detections to GT objects and relations, against hand-worked boxes."""
import numpy as np
import pytest

from components.data.detections import assign_detections, detection_graph
from components.errors import InputError

GT = np.array([[0, 0, 9, 9], [20, 20, 29, 29], [40, 0, 49, 9]], np.float32)  # three 10 x 10 boxes (+1 pixel)


def test_assignment_uses_the_best_iou_at_the_threshold():
    det = np.array([[0, 0, 9, 9],        # box 0 exactly
                    [0, 0, 9, 4],        # half of box 0: IoU 50 / 100 = 0.5, kept
                    [0, 0, 9, 3],        # IoU 40 / 100 = 0.4: background
                    [20, 22, 29, 31],    # box 1 shifted by 2: IoU 80 / 120 = 0.667
                    [100, 100, 120, 120]], np.float32)
    np.testing.assert_array_equal(assign_detections(det, GT), [0, 0, -1, 1, -1])
    np.testing.assert_array_equal(assign_detections(det, GT, iou_threshold=0.6), [0, -1, -1, 1, -1])
    assert assign_detections(np.zeros((0, 4)), GT).shape == (0,)
    np.testing.assert_array_equal(assign_detections(det, np.zeros((0, 4))), [-1] * 5)
    with pytest.raises(InputError, match="iou_threshold"):
        assign_detections(det, GT, iou_threshold=0.0)


def test_a_box_between_two_objects_goes_to_the_closer():
    gt = np.array([[0, 0, 9, 9], [4, 0, 13, 9]], np.float32)
    det = np.array([[3, 0, 12, 9]], np.float32)  # IoU 70/130 with the first, 90/110 with the second
    np.testing.assert_array_equal(assign_detections(det, gt), [1])


def test_detection_graph_carries_relations_to_every_assigned_pair():
    img = {"image_id": "im", "split": "test", "width": 60, "height": 40, "boxes": GT, "labels": np.array([5, 7, 9]),
           "obj_features": np.zeros((3, 2), np.float32),
           "rels": np.array([[0, 1, 3], [1, 2, 4]]), "rel_fine": np.array([13, 4]),
           # two detections of object 0, one of object 1, one clutter box; object 2 missed
           "det_boxes": np.array([[0, 0, 9, 9], [20, 20, 29, 29], [1, 0, 9, 9], [50, 30, 59, 39]], np.float32),
           "det_features": np.arange(8, dtype=np.float32).reshape(4, 2)}
    g = detection_graph(img)
    np.testing.assert_array_equal(g["labels"], [5, 7, 5, 0])
    np.testing.assert_array_equal(g["boxes"], img["det_boxes"])
    np.testing.assert_array_equal(g["obj_features"], img["det_features"])
    # (0 -> 1, predicate 3) holds for detections (0, 1) and (2, 1); (1 -> 2) is lost with object 2
    np.testing.assert_array_equal(g["rels"], [[0, 1, 3], [2, 1, 3]])
    np.testing.assert_array_equal(g["rel_fine"], [13, 13])
    assert (g["image_id"], g["width"], g["height"]) == ("im", 60, 40)


def test_a_relation_between_duplicates_of_one_object_is_not_a_self_pair():
    img = {"image_id": "x", "width": 30, "height": 30, "boxes": GT[:2], "labels": np.array([1, 2]),
           "obj_features": np.zeros((2, 1)), "rels": np.array([[0, 1, 1]]), "rel_fine": np.array([1]),
           "det_boxes": GT[:1], "det_features": np.zeros((1, 1))}
    g = detection_graph(img)
    assert g["rels"].shape == (0, 3) and g["rel_fine"].shape == (0,)
    np.testing.assert_array_equal(g["labels"], [1])


def test_an_image_without_detections_is_refused():
    with pytest.raises(InputError, match="no detections"):
        detection_graph({"image_id": "im7", "boxes": GT, "labels": [1, 2, 3]})
