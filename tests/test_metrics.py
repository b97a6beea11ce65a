"""LVE, MVE and FDD against values computed by hand; the edit distance (jiwer's) against the textbook one."""

import numpy as np
import pytest

from avguide.metrics import GAP, align, cer, edit_distance, fdd, lve, mve, wer


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


def levenshtein(ref, hyp) -> int:
    """The textbook dynamic programme (what metrics.edit_distance computed before it used jiwer)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def test_edit_distance_and_alignment_are_levenshteins():
    rng = np.random.default_rng(0)
    cases = [
        ("kitten", "sitting"),
        ("", "abc"),
        ("abc", ""),
        ("", ""),
        ("flaw", "lawn"),
        (" a b ", "a  b"),
        ("bin blue".split(), "pin blue now".split()),
        (["PP", "ih", "nn"], ["kk", "RR", "ih", "nn"]),
    ]
    cases += [
        (list(rng.choice(list("abc "), rng.integers(0, 9))), list(rng.choice(list("abc "), rng.integers(0, 9))))
        for _ in range(300)
    ]
    for ref, hyp in cases:
        d = edit_distance(ref, hyp)
        assert d == levenshtein(ref, hyp), (ref, hyp)
        pairs = align(ref, hyp)
        assert sum(a != b for a, b in pairs) == d
        assert [a for a, _ in pairs if a != GAP] == list(ref) and [b for _, b in pairs if b != GAP] == list(hyp)


def test_error_rates_of_empty_transcripts():
    assert cer("abc", "") == 1.0 and wer("a b", "") == 1.0  # nothing read: every reference token deleted
    assert cer(["ab", ""], ["ab", "xy"]) == 1.0  # an empty reference adds insertions, no length
    assert cer(" ab", "ab") == 1 / 3  # spaces are characters, leading and trailing ones too
    with pytest.raises(ValueError, match="references are all empty"):
        cer([""], ["abc"])
    with pytest.raises(ValueError, match="references are all empty"):
        wer(["  "], ["abc"])
