"""LVE, MVE and FDD against values computed by hand; the edit distance (jiwer's) against the textbook one; the
lip-articulation metrics (lip MVE, aperture RMSE, closure rate, MTM) on hand-made curves with known answers."""

import numpy as np
import pandas as pd
import pytest

from avguide.metrics import (
    GAP,
    align,
    aperture_rmse,
    cer,
    closure_counts,
    closure_rate,
    edit_distance,
    fdd,
    lip_mve,
    lve,
    matched_extrema,
    mtm,
    mtm_per_sequence,
    mve,
    phoneme_frames,
    wer,
)


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


# ---------------------------------------------------------------- lip articulation

MM = 1e-3  # curves and vertices are metres


def test_lip_mve_is_the_mean_lip_vertex_distance_in_mm():
    gt = np.zeros((2, 3, 3))
    pred = gt.copy()
    pred[0, 0] = [3 * MM, 0, 0]  # frame 0: lip vertex 0 off by 3 mm
    pred[1, 1] = [0, 0, 4 * MM]  # frame 1: lip vertex 1 off by 4 mm
    pred[:, 2] = 1.0  # a non-lip vertex, far off: ignored
    assert lip_mve(pred, gt, [0, 1]) == pytest.approx(7 / 4)
    # pooled over the frames of all sequences: a third, perfect frame lowers the mean
    assert lip_mve([pred, gt[:1]], [gt, gt[:1]], [0, 1]) == pytest.approx(7 / 6)
    assert lip_mve(pred.reshape(2, 9), gt.reshape(2, 9), [0, 1]) == pytest.approx(7 / 4)  # (T, V*3) layout
    with pytest.raises(ValueError, match="beyond the sequences' vertices"):
        lip_mve(pred, gt, [0, 3])
    with pytest.raises(ValueError, match="non-empty list of vertex ids"):
        lip_mve(pred, gt, [])
    with pytest.raises(ValueError, match="4 vertices, ground truth 3"):
        lip_mve(np.zeros((2, 4, 3)), gt, [0])


def test_aperture_rmse_of_a_constant_offset_and_pooled_over_frames():
    gt = np.linspace(0, 10 * MM, 20)
    assert aperture_rmse(gt + 2 * MM, gt) == pytest.approx(2.0)
    assert aperture_rmse(gt - 2 * MM, gt) == pytest.approx(2.0)
    # 3 frames 1 mm off and 1 frame 3 mm off: sqrt((3 * 1 + 9) / 4)
    got = aperture_rmse([np.full(3, 1 * MM), np.full(1, 3 * MM)], [np.zeros(3), np.zeros(1)])
    assert got == pytest.approx(np.sqrt(3.0))
    assert aperture_rmse(np.zeros(21), gt) == aperture_rmse(np.zeros(20), gt)  # one frame apart: trimmed
    with pytest.raises(ValueError, match="more than one apart"):
        aperture_rmse(np.zeros(22), gt)
    with pytest.raises(ValueError, match=r"shape \(frames,\)"):
        aperture_rmse(np.zeros((20, 2)), gt)
    with pytest.raises(ValueError, match="NaN"):
        aperture_rmse(np.full(20, np.nan), gt)


def phonemes(*rows):
    """phonemes.csv rows (utterance, viseme, start_s, end_s)."""
    return pd.DataFrame(rows, columns=["utterance", "viseme", "start_s", "end_s"])


def test_phoneme_frames_are_those_inside_the_interval_else_the_nearest():
    assert phoneme_frames(0.10, 0.20, 25, 10).tolist() == [3, 4, 5]  # 0.12, 0.16, 0.20 s (both ends count)
    assert phoneme_frames(0.135, 0.150, 25, 10).tolist() == [4]  # between frames 3 and 4: nearest the middle
    assert phoneme_frames(0.50, 0.70, 25, 10).tolist() == [9]  # past the curve's end: its last frame
    with pytest.raises(ValueError, match="ends before it starts"):
        phoneme_frames(0.2, 0.1, 25, 10)


def test_a_closure_counts_only_below_the_threshold_and_inside_the_interval():
    open_5mm = np.full(10, 5 * MM)
    closes = open_5mm.copy()
    closes[4] = 0.3 * MM  # inside [0.1, 0.2] s = frames 3..5
    nearly = open_5mm.copy()
    nearly[4] = 0.7 * MM  # not below 0.5 mm
    too_late = open_5mm.copy()
    too_late[6] = 0.0  # closed at 0.24 s, after the phoneme
    short = open_5mm.copy()
    short[4] = 0.0  # a phoneme between two frames takes the nearest
    table = phonemes(
        ("a", "PP", 0.10, 0.20),
        ("a", "aa", 0.20, 0.30),  # not bilabial: ignored even though the lips are open
        ("b", "PP", 0.10, 0.20),
        ("c", "PP", 0.10, 0.20),
        ("d", "PP", 0.135, 0.150),
    )
    curves = {"a": closes, "b": nearly, "c": too_late, "d": short}
    assert closure_counts(curves, table, fps=25) == (2, 4)
    assert closure_rate(curves, table, fps=25) == 0.5
    assert closure_rate(curves, table, fps=25, threshold_mm=1.0) == 0.75  # now 0.7 mm counts
    assert closure_rate(closes, table[table["utterance"] == "a"], fps=25) == 1.0  # one curve, one utterance


def test_closure_rate_errors():
    table = phonemes(("a", "PP", 0.1, 0.2), ("b", "PP", 0.1, 0.2))
    with pytest.raises(ValueError, match="no opening curve for utterance 'b'"):
        closure_rate({"a": np.zeros(10)}, table, fps=25)
    with pytest.raises(ValueError, match="no bilabial phonemes"):
        closure_rate({"a": np.zeros(10)}, phonemes(("a", "aa", 0.1, 0.2)), fps=25)
    with pytest.raises(ValueError, match="lack columns"):
        closure_rate({"a": np.zeros(10)}, table.drop(columns="viseme"), fps=25)
    with pytest.raises(ValueError, match="pass a dict"):
        closure_rate(np.zeros(10), table, fps=25)
    with pytest.raises(ValueError, match="shape"):
        closure_rate({"a": np.zeros((10, 1)), "b": np.zeros(10)}, table, fps=25)


def wave(shift_frames=0.0, n=100, period=20):
    t = np.arange(n)
    return 5 * MM * (1 + np.sin(2 * np.pi * (t - shift_frames) / period))


def test_mtm_of_a_curve_two_frames_late_is_80_ms_at_25_fps():
    gt, late = wave(), wave(2)
    # each extremum of the truth (every 10 frames from frame 5) matched to the same kind two frames later
    assert matched_extrema(late, gt)[:3] == [(5, 7), (15, 17), (25, 27)]
    assert mtm(late, gt, fps=25) == pytest.approx(80.0)
    assert mtm(wave(-2), gt, fps=25) == pytest.approx(80.0)  # early is as misaligned as late
    assert mtm(late, gt, fps=50) == pytest.approx(40.0)
    assert mtm(gt, gt, fps=25) == 0.0
    # the mean over sequences of each one's mean
    assert mtm_per_sequence([late, gt], [gt, gt], fps=25) == pytest.approx([80.0, 0.0])
    assert mtm([late, gt], [gt, gt], fps=25) == pytest.approx(40.0)


def test_mtm_is_undefined_for_a_still_prediction():
    gt = wave()
    still = np.full(100, 0.8 * MM)
    assert np.isnan(mtm(still, gt, fps=25))
    assert mtm([still, wave(1)], [gt, gt], fps=25) == pytest.approx(40.0)  # left out of the mean
    with pytest.raises(ValueError, match="fps must be positive"):
        mtm(gt, gt, fps=0)
    with pytest.raises(ValueError, match="as many predicted as ground-truth"):
        mtm([gt], [gt, gt], fps=25)
