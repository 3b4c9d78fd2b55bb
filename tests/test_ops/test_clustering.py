"""Tests of mmens.ops.match_boxes (WBF clusters with per-member Ŷ)."""
import warnings

import ensemble_boxes as eb
import numpy as np
import pytest
import torch

from mmens.ops import (CONF_TYPES, Clusters, PackedDetections, match_boxes,
                       normalize_boxes, weighted_boxes_fusion_batch)

# every test runs on the compiled kernel and on the pure-torch path
pytestmark = pytest.mark.usefixtures('fusion_backend')


def make_batch(seed, n_images=6, n_members=4, n_obj=5, n_cls=3):
    """Per image per member lists (NumPy) and the packed tensors."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n_images):
        ctr = rng.random((n_obj, 2)) * 0.6 + 0.2
        wh = rng.random((n_obj, 2)) * 0.2 + 0.05
        cls = rng.integers(0, n_cls, n_obj)
        bl, sl, ll = [], [], []
        for _m in range(n_members):
            k = int(rng.integers(0, 12))
            o = rng.integers(0, n_obj, k)
            c = ctr[o] + rng.normal(0, 0.015, (k, 2))
            s = wh[o] * (1 + rng.normal(0, 0.1, (k, 2)))
            bl.append(np.concatenate([c - s / 2, c + s / 2], 1).clip(0, 1))
            sl.append(rng.random(k))
            ll.append(cls[o])
        images.append((bl, sl, ll))
    return images


def pack(images):
    b, s, lab, m, i = [], [], [], [], []
    for ii, (bl, sl, ll) in enumerate(images):
        for mm, (bb, ss, la) in enumerate(zip(bl, sl, ll)):
            b.append(bb)
            s.append(ss)
            lab.append(la)
            m += [mm] * len(ss)
            i += [ii] * len(ss)
    t = torch.from_numpy
    return PackedDetections(t(np.concatenate(b)), t(np.concatenate(s)),
                            t(np.concatenate(lab)).long(), torch.tensor(m),
                            torch.tensor(i), len(images[0][0]), len(images))


def test_fused_equals_ensemble_boxes_and_image_order():
    images = make_batch(0)
    w = [1.0, 2.0, 0.5, 1.5]
    for ct in CONF_TYPES:
        c = match_boxes(pack(images),
                        weights=torch.tensor(w),
                        conf_type=ct,
                        iou_thr=0.5)
        assert isinstance(c, Clusters)
        assert torch.all(c.image_index[1:] >= c.image_index[:-1])
        for i, img in enumerate(images):
            rb, rs, rl = eb.weighted_boxes_fusion(*img,
                                                  weights=w,
                                                  conf_type=ct,
                                                  iou_thr=0.5)
            sel = c.image_index == i
            np.testing.assert_allclose(c.fused_boxes[sel].numpy(),
                                       rb,
                                       atol=1e-12,
                                       rtol=0)
            np.testing.assert_allclose(c.fused_scores[sel].numpy(),
                                       rs,
                                       atol=1e-12,
                                       rtol=0)
            np.testing.assert_array_equal(c.labels[sel].numpy(), rl)


@pytest.mark.parametrize('reduce', ['mean', 'best'])
def test_yhat_mask_counts_consistency(reduce):
    images = make_batch(1)
    dets = pack(images)
    boxes, scores, labels, members, imgs, n, ni = dets
    c = match_boxes(dets,
                    skip_box_thr=0.2,
                    member_reduce=reduce)
    cc = c.fused_scores.shape[0]
    assert c.y_hat.shape == (cc, n, 5) and c.mask.shape == (cc, n)
    assert c.counts.shape == (cc, n) and c.box_cluster.shape == scores.shape
    assert c.y_hat.dtype == torch.float64 and c.counts.dtype == torch.long
    assert torch.equal(c.mask, c.counts > 0)
    assert torch.all(c.y_hat[~c.mask] == 0)
    kept = scores >= 0.2
    assert torch.equal(c.box_cluster >= 0, kept)
    assert int(c.counts.sum()) == int(kept.sum())
    for k in torch.nonzero(kept)[:, 0].tolist():
        cl = int(c.box_cluster[k])
        assert c.labels[cl] == labels[k] and c.image_index[cl] == imgs[k]
    for cl in range(cc):
        for m in torch.nonzero(c.mask[cl])[:, 0].tolist():
            sel = (c.box_cluster == cl) & (members == m)
            b, s = boxes[sel], scores[sel]
            assert int(sel.sum()) == int(c.counts[cl, m])
            if reduce == 'mean':
                exp = torch.cat([(s[:, None] * b).sum(0) / s.sum(),
                                 s.mean()[None]])
            else:
                j = int(torch.argmax(s))
                exp = torch.cat([b[j], s[j, None]])
            assert torch.allclose(c.y_hat[cl, m], exp, atol=1e-12)
        # the fused box lies inside the hull of the cluster's member rows
        rows = c.y_hat[cl][c.mask[cl]]
        if reduce == 'mean':
            fb = c.fused_boxes[cl]
            assert torch.all(fb >= rows[:, :4].min(0).values - 1e-6)
            assert torch.all(fb <= rows[:, :4].max(0).values + 1e-6)


def test_best_and_mean_share_clusters():
    args = pack(make_batch(2))
    a = match_boxes(args, member_reduce='mean')
    b = match_boxes(args, member_reduce='best')
    for f in ('mask', 'labels', 'image_index', 'fused_boxes', 'fused_scores',
              'counts', 'box_cluster'):
        assert torch.equal(getattr(a, f), getattr(b, f))
    single = a.counts == 1
    assert torch.allclose(a.y_hat[single], b.y_hat[single], atol=1e-15)


def test_pixels_with_image_sizes_equal_normalised():
    images = make_batch(3)
    boxes, scores, labels, members, imgs, n, ni = pack(images)
    sizes = torch.tensor([[640., 480.], [333., 500.], [1000., 1000.],
                          [17., 23.], [640., 640.], [800., 600.]],
                         dtype=torch.float64)
    pixels = boxes * sizes[imgs].repeat(1, 2)
    norm = normalize_boxes(pixels, sizes, imgs)
    a = match_boxes(PackedDetections(norm, scores, labels, members, imgs, n,
                                     ni))
    b = match_boxes(PackedDetections(pixels, scores, labels, members, imgs, n,
                                     ni),
                    image_sizes=sizes)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert torch.allclose(
        a.fused_boxes,
        match_boxes(pack(images)).fused_boxes)


def test_identical_members_return_their_input():
    rng = np.random.default_rng(4)
    xy = np.array([[.1, .1], [.5, .1], [.1, .5], [.5, .5]])
    b = np.concatenate([xy, xy + 0.3], 1)  # disjoint boxes
    s, lab = rng.random(4), np.array([0, 1, 0, 2])
    n = 5
    t = torch.from_numpy
    c = match_boxes(
        PackedDetections(t(np.tile(b, (n, 1))), t(np.tile(s, n)),
                         t(np.tile(lab, n)),
                         torch.arange(n).repeat_interleave(4), None, n))
    order = np.argsort(-s)
    np.testing.assert_allclose(c.fused_boxes.numpy(), b[order], atol=1e-7)
    np.testing.assert_allclose(c.fused_scores.numpy(), s[order], atol=1e-7)
    assert torch.all(c.counts == 1) and torch.all(c.mask)
    assert torch.allclose(c.y_hat[:, :, :4],
                          t(b[order])[:, None].expand(4, n, 4))
    out = weighted_boxes_fusion_batch([([b] * n, [s] * n, [lab] * n)])[0]
    np.testing.assert_allclose(out[0], b[order], atol=1e-7)


def test_batched_equals_per_image_and_class_agnostic():
    images = make_batch(5)
    args = pack(images)
    full = match_boxes(args)
    for i, img in enumerate(images):
        one = match_boxes(pack([img]))
        sel = full.image_index == i
        assert torch.equal(one.fused_boxes, full.fused_boxes[sel])
        assert torch.equal(one.y_hat, full.y_hat[sel])
    ag = match_boxes(args, class_agnostic=True)
    assert ag.fused_scores.shape[0] <= full.fused_scores.shape[0]
    # class-agnostic == WBF on relabelled input (all labels 0), label = the
    # label of the cluster's first (highest weighted score) box
    b, s, lab, m, im, n, ni = args
    zero = match_boxes(args._replace(labels=torch.zeros_like(lab)))
    assert torch.equal(ag.fused_boxes, zero.fused_boxes)
    assert torch.equal(ag.box_cluster, zero.box_cluster)
    for cl in range(ag.labels.shape[0]):
        sel = ag.box_cluster == cl
        assert ag.labels[cl] == lab[sel][torch.argmax(s[sel])]


def test_zero_score_cluster_and_float32_input():
    b = torch.tensor([[.1, .1, .5, .5], [.1, .1, .5, .52], [.6, .6, .9, .9]])
    c = match_boxes(
        PackedDetections(b, torch.tensor([0., 0., .5]), torch.zeros(3).long(),
                         torch.tensor([0, 1, 0]), None, 2))
    assert c.fused_boxes.dtype == torch.float32
    assert torch.isfinite(c.fused_boxes).all()  # ensemble-boxes gives NaN
    assert torch.equal(c.counts, torch.tensor([[1, 0], [1, 1]]))
    assert torch.allclose(c.y_hat[1, :, :4], b[:2])  # plain mean fallback


def test_match_boxes_bad_arguments():
    args = pack(make_batch(6, n_images=1))
    with pytest.raises(ValueError, match='member_reduce'):
        match_boxes(args, member_reduce='max')
    with pytest.raises(ValueError, match='conf_type'):
        match_boxes(args, conf_type='median')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        match_boxes(args)  # in-range input: no warning


def test_wbf_keywords_are_one_set():
    """match_boxes takes WBF's keywords with the defaults of
    weighted_boxes_fusion_packed, and refuses others in one line."""
    import inspect

    from mmens.ops.clustering import WBF_DEFAULTS
    from mmens.ops.wbf import weighted_boxes_fusion_packed
    params = inspect.signature(weighted_boxes_fusion_packed).parameters
    assert WBF_DEFAULTS == {
        k: p.default
        for k, p in params.items() if p.kind == p.KEYWORD_ONLY and k[0] != '_'
    }
    dets = PackedDetections(torch.tensor([[.1, .1, .4, .4]]), torch.ones(1),
                            torch.zeros(1).long(), torch.zeros(1).long(),
                            None, 1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'iou'"):
        match_boxes(dets, iou=0.5)
