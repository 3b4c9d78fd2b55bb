"""Run-length masks: pycocotools' RLE text, and the fused mask of a cluster against a
dense reference written as its formula."""
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from mmens.ops.masks import (MaskRuns, cluster_regions, fuse_cluster_masks, mask_extents,
                             rle_decode_counts, rle_encode_counts, runs_from_bitmaps,
                             runs_from_counts, runs_to_counts)

H, W = 37, 29


def _masks(seed: int = 0):
    rng = np.random.RandomState(seed)
    ms = [(rng.rand(H, W) > t) for t in (0.5, 0.9, 0.99, 1.0, 0.0)]  # empty and full too
    band = np.zeros((H, W), bool)
    band[:, 3:5] = True  # a run that goes on from a column's last row to the next column
    return ms + [band]


def _runs(ms) -> MaskRuns:
    texts = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))['counts'] for m in ms]
    counts, offsets, bad = rle_decode_counts(texts)
    assert not bad.any()
    return runs_from_counts(torch.from_numpy(counts), torch.from_numpy(offsets))


def _dense(runs: MaskRuns, j: int, h: int = H, w: int = W) -> np.ndarray:
    flat = np.zeros(h * w, bool)
    for s, e in zip(runs.starts[runs.offsets[j]:runs.offsets[j + 1]].tolist(),
                    runs.ends[runs.offsets[j]:runs.offsets[j + 1]].tolist()):
        flat[s:e] = True
    return flat.reshape(w, h).T  # column-major


def test_rle_text_round_trip_equals_pycocotools():
    ms = _masks()
    texts = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))['counts'] for m in ms]
    counts, offsets, bad = rle_decode_counts(texts)
    for j, m in enumerate(ms):
        c = counts[offsets[j]:offsets[j + 1]]
        assert c.sum() == H * W
        assert (np.repeat(np.arange(len(c)) % 2, c).astype(bool) == m.T.ravel()).all()
    runs = runs_from_counts(torch.from_numpy(counts), torch.from_numpy(offsets))
    for j, m in enumerate(ms):
        assert (_dense(runs, j) == m).all()
    back, back_off = runs_to_counts(runs, torch.full((len(ms),), H * W))
    assert rle_encode_counts(back.numpy(), back_off.numpy()) == texts


def test_rle_decode_flags_malformed_text():
    good = mask_utils.encode(np.asfortranarray(_masks()[0].astype(np.uint8)))['counts']
    _, _, bad = rle_decode_counts([b'0\x7f', good[:-1] + b'o', good, b'abc'])
    # a character outside '0'..'o'; a last number not ended; the good text; a count < 0
    assert bad.tolist() == [True, True, False, True]


def test_fusing_identical_masks_returns_them():
    runs = _runs(_masks())
    for j in range(len(runs)):
        one = runs.select(torch.tensor([j]))
        three = runs.select(torch.tensor([j, j, j]))
        cluster = torch.zeros(3, dtype=torch.long)
        region = cluster_regions(torch.tensor([[0., 0., W, H]] * 3), cluster, 1,
                                 torch.tensor([[W, H]]))
        for vote in (False, True):
            fused = fuse_cluster_masks(three, cluster, torch.tensor([0.9, 0.5, 0.1]), region,
                                       torch.tensor([H]), vote=vote)
            assert torch.equal(fused.starts, one.starts) and torch.equal(fused.ends, one.ends)


@pytest.mark.parametrize('max_buffer', [1, 200, 1 << 22])
def test_fused_mask_is_the_thresholded_weighted_mean_in_the_region(max_buffer):
    rng = np.random.RandomState(1)
    ms = _masks()
    runs = _runs(ms)
    n_box, n_cl = 40, 7
    cluster = torch.from_numpy(rng.randint(-1, n_cl, n_box))
    cluster[:n_cl] = torch.arange(n_cl)
    mask_of = rng.randint(0, len(ms), n_box)
    w = rng.rand(n_box)
    regions = []
    for _ in range(n_cl):
        x0, y0 = rng.randint(0, W - 1), rng.randint(0, H - 1)
        regions.append([x0, y0, rng.randint(x0 + 1, W + 1), rng.randint(y0 + 1, H + 1)])
    for thr, vote in ((0.5, False), (0.3, False), (1.0, False), (0.5, True)):
        fused = fuse_cluster_masks(runs.select(torch.from_numpy(mask_of)), cluster,
                                   torch.from_numpy(w), torch.tensor(regions),
                                   torch.full((n_cl,), H), thr, vote, max_buffer)
        for c, (x0, y0, x1, y1) in enumerate(regions):
            sel = cluster.numpy() == c
            wc = np.ones(sel.sum()) if vote else w[sel]
            mean = sum(wj * ms[j] for wj, j in zip(wc, mask_of[sel])) / wc.sum()
            want = np.zeros((H, W), bool)
            want[y0:y1, x0:x1] = mean[y0:y1, x0:x1] >= thr - 1e-12
            assert (_dense(fused, c) == want).all(), (thr, vote, c)


def test_cluster_regions_hold_the_boxes_in_whole_pixels():
    boxes = torch.tensor([[1.5, 2.2, 10.1, 8.0], [0.2, 3.0, 9.0, 12.7], [5., 5., 6., 6.]])
    regions = cluster_regions(boxes, torch.tensor([0, 0, -1]), 1, torch.tensor([[10, 12]]))
    assert regions.tolist() == [[0, 2, 10, 12]]  # floor, ceil, inside the 10x12 image


def test_runs_from_bitmaps_equal_the_rle_runs():
    ms = _masks()
    runs = runs_from_bitmaps(torch.from_numpy(np.stack(ms)))
    want = _runs(ms)
    assert all(torch.equal(a, b) for a, b in zip(runs, want))


def test_regions_hold_the_masks_that_reach_outside_their_boxes():
    ms = _masks()
    runs = _runs([ms[5], ms[2]])  # columns 3-4 over every row; a few random pixels
    ext = mask_extents(runs, torch.tensor([H, H]))
    assert ext[0].tolist() == [3, 0, 5, H]
    ys, xs = np.nonzero(ms[2])
    assert ext[1].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    box = torch.tensor([[10., 10., 12., 12.]] * 2)
    regions = cluster_regions(box, torch.tensor([0, -1]), 1, torch.tensor([[W, H]]), runs)
    assert regions.tolist() == [[3, 0, 12, H]]  # the box and the mask of box 0 only
