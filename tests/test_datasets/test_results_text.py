"""The compiled writer of COCO-results text (``mmens._results_io.format_results``) writes
the bytes of the orjson writer (``coco_results._results_chunk``) for any float64."""
import numpy as np
import pytest

from mmens.datasets import coco_results

IO = coco_results._results_io()
pytestmark = pytest.mark.skipif(IO is None, reason='mmens._results_io is not built')


def assert_same_text(image_ids, category_ids, bboxes, scores):
    cols = (np.ascontiguousarray(image_ids, dtype=np.int64),
            np.ascontiguousarray(category_ids, dtype=np.int64),
            np.ascontiguousarray(bboxes, dtype=np.float64).reshape(-1, 4),
            np.ascontiguousarray(scores, dtype=np.float64))
    got = IO.format_results(*cols)
    want = coco_results._results_chunk(*cols) if len(cols[3]) else b''
    if got != want:  # name the first entry that differs
        for k in range(len(cols[3])):
            one = tuple(c[k:k + 1] for c in cols)
            assert IO.format_results(*one) == coco_results._results_chunk(*one)
    assert got == want


def test_any_bit_pattern():
    """Every exponent, subnormals, NaN and infinities (null), int64 extremes."""
    rng = np.random.default_rng(0)
    n = 20000
    bits = rng.integers(0, 2**64, size=5 * n, dtype=np.uint64).view(np.float64)
    ids = rng.integers(-2**63, 2**63 - 1, size=(2, n))
    assert_same_text(ids[0], ids[1], bits[:4 * n], bits[4 * n:])
    assert_same_text([2**63 - 1, -2**63], [0, -1], np.ones((2, 4)), [1.0, 0.0])
    assert_same_text([], [], np.zeros((0, 4)), [])


@pytest.mark.parametrize('scale', [1e-7, 1e-5, 1e-4, 1e-2, 1.0, 640.0, 1e9, 1e14, 1e15,
                                   1e16, 1e22, 1e300])
def test_decimal_and_float32_values(scale):
    """Rounded to 0-12 decimals (fused files: 3 and 6), float32 values seen as float64,
    negative ones, around the switches between fixed and scientific notation."""
    rng = np.random.default_rng(int(np.log10(scale)) + 400)
    n = 2000
    v = rng.random(5 * n) * scale
    with np.errstate(over='ignore'):  # beyond float32: inf, written null
        v32 = v.astype(np.float32).astype(np.float64)
    for w in [v, -v, v32, np.round(v32, 3)] + [np.round(v / scale, d) * scale
                                               for d in (0, 1, 3, 6, 9, 12)]:
        assert_same_text(rng.integers(0, 10**6, n), rng.integers(0, 100, n), w[:4 * n],
                         w[4 * n:])


def test_edges():
    edge = np.array([0.0, 1.0, 0.1, 0.3, 1 / 3, 100.0, 123.456, 1e-4, 1e-5, 9.999e-5, 1e-6,
                     1e15, 1e16, 9999999999999998.0, 2.0**53, 2.0**53 / 1e9, 1e21, 1e22,
                     5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, 1 - 2**-53,
                     0.1 + 0.2, np.nextafter(1e-4, 0), np.nextafter(1e15, 0), np.nan,
                     np.inf])
    edge = np.concatenate([edge, -edge])
    assert_same_text(np.arange(len(edge)), np.arange(len(edge)),
                     np.stack([edge] * 4, 1), edge)


def test_results_text_is_split_free():
    """results_text (compiled) is the orjson text of any split of the entries."""
    rng = np.random.default_rng(1)
    n = 3000
    cols = (rng.integers(0, 10**6, n), rng.integers(0, 91, n),
            np.round(rng.random((n, 4)) * 600, 3), np.round(rng.random(n), 6))
    whole = coco_results.results_text(*cols)
    assert whole == b','.join(coco_results._results_chunk(*(c[s:s + 700] for c in cols))
                              for s in range(0, n, 700))
    with pytest.raises(ValueError, match='column lengths disagree'):
        IO.format_results(*(np.ascontiguousarray(c[:n - (k == 3)], dtype=t) for k, (c, t) in
                            enumerate(zip(cols, (np.int64, np.int64, np.float64,
                                                 np.float64)))))
