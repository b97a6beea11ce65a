"""LVE, MVE and FDD against values computed by hand."""
import numpy as np
import pytest

from avguide.metrics import fdd, lve, mve


def test_lve_is_the_mean_over_frames_of_the_worst_lip_vertex():
    gt = np.zeros((2, 3, 3))
    pred = gt.copy()
    pred[0, 0] = [0.1, 0, 0]  # frame 0: lip vertex 0 off by 0.1 -> 0.01
    pred[0, 1] = [0, 0.2, 0]  # and lip vertex 1 by 0.2 -> 0.04, the worst
    pred[1, 2] = [3.0, 0, 0]  # frame 1: only a non-lip vertex is off
    assert lve(pred, gt, [0, 1]) == pytest.approx((0.04 + 0.0) / 2)
    # sequences are pooled frame by frame, not averaged per sequence
    assert lve([pred, gt[:1]], [gt, gt[:1]], [0, 1]) == pytest.approx(0.04 / 3)


def test_mve_is_the_mean_distance_over_vertices_and_frames():
    gt = np.zeros((1, 2, 3))
    pred = np.array([[[3.0, 4.0, 0.0], [0.0, 0.0, 1.0]]])  # distances 5 and 1
    assert mve(pred, gt) == pytest.approx(3.0)
    assert mve(pred.reshape(1, 6), gt.reshape(1, 6)) == pytest.approx(3.0)  # FaceFormer's (T, V*3) layout


def test_fdd_compares_upper_face_motion_variability():
    template = np.zeros((2, 3))
    gt = np.zeros((4, 2, 3))
    gt[:, 0, 1] = [0.0, 1.0, 0.0, 1.0]  # squared motion 0,1,0,1: std 0.5
    pred = np.zeros((4, 2, 3))  # a still upper face: std 0
    assert fdd(pred, gt, template, [0]) == pytest.approx(0.5)
    assert fdd(gt, gt, template, [0]) == pytest.approx(0.0)
    # averaged over upper vertices: vertex 1 is still in both
    assert fdd(pred, gt, template, [0, 1]) == pytest.approx(0.25)
    assert fdd([pred, gt], [gt, gt], [template, template], [0]) == pytest.approx(0.25)


def test_lengths_and_shapes_are_checked():
    gt = np.zeros((10, 4, 3))
    assert lve(np.zeros((11, 4, 3)), gt, [0]) == 0.0  # one frame apart: trimmed
    with pytest.raises(ValueError, match="12 frames, ground truth 10"):
        lve(np.zeros((12, 4, 3)), gt, [0])
    with pytest.raises(ValueError, match="5 vertices, ground truth 4"):
        mve(np.zeros((10, 5, 3)), gt)
    with pytest.raises(ValueError, match="one template per sequence"):
        fdd([gt, gt], [gt, gt], [np.zeros((4, 3))] * 3, [0])
