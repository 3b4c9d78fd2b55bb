"""List / batch / packed / torch API, validation and repairs of the fusion
ops (parity itself is in test_fusion_parity.py)."""
import warnings

import ensemble_boxes as eb
import numpy as np
import pytest
import torch

import mmens.ops as mo
from mmens.ops.listapi import pack_images

# every test runs on the compiled kernel and on the pure-torch path
pytestmark = pytest.mark.usefixtures('fusion_backend')

LIST_FNS = {
    'wbf': (mo.weighted_boxes_fusion, mo.weighted_boxes_fusion_batch),
    'nmw': (mo.non_maximum_weighted, mo.non_maximum_weighted_batch),
    'nms': (mo.nms, mo.nms_batch),
    'soft_nms': (mo.soft_nms, mo.soft_nms_batch),
}


def image(seed, n_members=3, n=8):
    rng = np.random.default_rng(seed)
    bl, sl, ll = [], [], []
    for m in range(n_members):
        k = 0 if (seed + m) % 4 == 0 else n
        c = rng.random((k, 2)) * 0.4 + 0.3
        s = rng.random((k, 2)) * 0.2 + 0.05
        bl.append(np.concatenate([c - s, c + s], 1))
        sl.append(rng.random(k))
        ll.append(rng.integers(0, 3, k))
    return bl, sl, ll


def _eq(a, b, exact=True):
    for x, y in zip(a, b):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        if exact:
            np.testing.assert_array_equal(x, y)
        else:
            np.testing.assert_allclose(x, y, atol=1e-6)


@pytest.mark.parametrize('name', list(LIST_FNS))
def test_batch_equals_per_image_calls(name):
    one, batch = LIST_FNS[name]
    e = np.zeros((0, 4))
    images = [image(s) for s in range(5)] + [([e] * 3, [[]] * 3, [[]] * 3)]
    outs = batch(images)
    assert len(outs) == len(images)
    for img, out in zip(images, outs):
        _eq(one(*img), out)
    assert all(len(x) == 0 for x in outs[-1])  # empty image
    assert outs[-1][0].shape == (0, 4)


@pytest.mark.parametrize('name', list(LIST_FNS))
def test_torch_in_torch_out(name):
    one, _ = LIST_FNS[name]
    img = image(1)
    tin = [[torch.as_tensor(x, dtype=torch.float32) for x in img[0]],
           [torch.as_tensor(x, dtype=torch.float32) for x in img[1]],
           [torch.as_tensor(x) for x in img[2]]]
    b, s, lab = one(*tin)
    assert isinstance(b, torch.Tensor) and b.dtype == torch.float32
    assert s.dtype == torch.float32 and lab.dtype == torch.long
    assert b.device == tin[0][0].device
    rb, rs, rl = one(*[[np.asarray(x.numpy(), np.float64) for x in lst]
                       for lst in tin])
    np.testing.assert_allclose(b.numpy(), rb, atol=1e-6)
    np.testing.assert_allclose(s.numpy(), rs, atol=1e-6)
    np.testing.assert_array_equal(lab.numpy(), rl)


@pytest.mark.parametrize('name', list(LIST_FNS))
def test_packed_api_and_registry(name):
    images = [image(s) for s in range(4)]
    p = pack_images(images)
    fn = mo.FUSION_METHODS[name]
    b, s, lab, img = fn(p.dets)
    assert b.shape == (s.shape[0], 4) and lab.dtype == torch.long
    outs = LIST_FNS[name][1](images)
    for i, (rb, rs, rl) in enumerate(outs):
        sel = img == i
        assert torch.all(s[sel][1:] <= s[sel][:-1])  # score descending
        k = np.lexsort((rb[:, 0], rl, -rs))
        kk = np.lexsort((b[sel][:,
                                0].numpy(), lab[sel].numpy(), -s[sel].numpy()))
        np.testing.assert_allclose(b[sel].numpy()[kk], rb[k], atol=1e-6)
        np.testing.assert_allclose(s[sel].numpy()[kk], rs[k], atol=1e-6)
    assert set(mo.FUSION_METHODS) == {'wbf', 'nms', 'soft_nms', 'nmw'}


def test_soft_nms_decayed_scores_fix():
    img = image(2)
    b0, s0, l0 = mo.soft_nms(*img, sigma=0.1)
    b1, s1, l1 = mo.soft_nms(*img, sigma=0.1, return_decayed_scores=True)
    np.testing.assert_array_equal(b0, b1)
    assert np.all(s1 <= s0 + 1e-12) and np.any(s1 < s0 - 1e-3)


def test_nms_does_not_modify_scores_and_empty_input():
    img = image(3)
    before = [s.copy() for s in img[1]]
    mo.nms(*img, weights=[1, 2, 3])
    mo.soft_nms(*img, weights=[1, 2, 3])
    for a, b in zip(before, img[1]):
        np.testing.assert_array_equal(a, b)
    for fn in (mo.nms, mo.soft_nms):  # ensemble-boxes raises here
        b, s, lab = fn([[], []], [[], []], [[], []])
        assert b.shape == (0, 4) and s.shape == (0, ) and lab.shape == (0, )
    with pytest.raises(ValueError):
        eb.nms([np.zeros((0, 4))], [np.zeros(0)], [np.zeros(0)])


def test_empty_member_matches_reference():
    img = image(0)  # member 0 is empty
    assert len(img[0][0]) == 0
    _eq(eb.weighted_boxes_fusion(*img),
        mo.weighted_boxes_fusion(*img),
        exact=False)
    _eq(eb.non_maximum_weighted(*img),
        mo.non_maximum_weighted(*img),
        exact=False)
    for fn in (mo.weighted_boxes_fusion, mo.non_maximum_weighted):
        b, s, lab = fn([], [], [])
        assert b.shape == (0, 4) and b.dtype == np.float64


BOX = [0.1, 0.1, 0.5, 0.5]


@pytest.mark.parametrize('bad,field,msg', [
    (lambda b, s, l: b[1].__setitem__((0, 2), np.nan), 'boxes', 'NaN'),
    (lambda b, s, l: b[1].__setitem__((0, 0), np.inf), 'boxes', 'NaN'),
    (lambda b, s, l: b[1].__setitem__((0, 0), 0.9), 'boxes', 'x2 < x1'),
    (lambda b, s, l: b[1].__setitem__((0, 1), 0.9), 'boxes', 'y2 < y1'),
    (lambda b, s, l: s[1].__setitem__(0, np.nan), 'scores', 'NaN'),
    (lambda b, s, l: s[1].__setitem__(0, 1.5), 'scores', r'outside \[0, 1\]'),
    (lambda b, s, l: s[1].__setitem__(0, -0.1), 'scores', 'outside'),
    (lambda b, s, l: l.__setitem__(1, np.array([1.5, 2.0])), 'labels',
     'integer'),
])
@pytest.mark.parametrize('name', list(LIST_FNS))
def test_bad_values_name_member_image_field(bad, field, msg, name):
    b = [np.array([BOX, BOX]), np.array([BOX, BOX])]
    s = [np.array([0.5, 0.6]), np.array([0.5, 0.6])]
    lab = [np.array([1, 2]), np.array([1, 2])]
    bad(b, s, lab)
    one, batch = LIST_FNS[name]
    with pytest.raises(ValueError,
                       match=f"member 1, box 0: field '{field}' .*{msg}"):
        one(b, s, lab)
    ok = ([np.array([BOX])] * 2, [np.array([.5])] * 2, [np.array([1])] * 2)
    with pytest.raises(ValueError,
                       match=f"image 2, member 1, box 0: field "
                       f"'{field}'"):
        batch([ok, ok, (b, s, lab)])


def test_bad_lengths_and_weights():
    b, s, lab = [np.array([BOX])] * 2, [np.array([.5])] * 2, [np.array([1])
                                                              ] * 2
    with pytest.raises(ValueError, match="member 1: field 'scores' has 2"):
        mo.weighted_boxes_fusion(b, [s[0], np.array([.5, .6])], lab)
    with pytest.raises(ValueError, match="image 1, member 0: field 'labels'"):
        mo.nms_batch([(b, s, lab), (b, s, [np.array([1, 2]), lab[1]])])
    with pytest.raises(ValueError, match="field 'scores' has 1 members"):
        mo.soft_nms(b, s[:1], lab)
    with pytest.raises(ValueError, match="image 1: field 'boxes' has 1 memb"):
        mo.weighted_boxes_fusion_batch([(b, s, lab), (b[:1], s[:1], lab[:1])])
    with pytest.raises(ValueError, match="member 0: field 'boxes' must be"):
        mo.weighted_boxes_fusion([np.array([[.1, .2, .3]])], s[:1], lab[:1])
    with pytest.raises(ValueError, match="field 'weights' has 3 entries"):
        mo.weighted_boxes_fusion(b, s, lab, weights=[1, 1, 1])
    with pytest.raises(ValueError, match="member 1: field 'weights'"):
        mo.non_maximum_weighted(b, s, lab, weights=[1, 0])
    with pytest.raises(ValueError, match='method'):
        mo.soft_nms(b, s, lab, method=4)
    with pytest.raises(ValueError, match='iou_thr'):
        mo.weighted_boxes_fusion(b, s, lab, iou_thr=-0.1)
    with pytest.raises(ValueError, match="box 1: field 'members'"):
        mo.match_boxes(
            mo.PackedDetections(torch.rand(2, 4).sort(1).values, torch.rand(2),
                                torch.ones(2).long(), torch.tensor([0, 5]),
                                None, 2))


@pytest.mark.parametrize('name', list(LIST_FNS))
def test_clipping_and_zero_area_warn_with_counts(name):
    b = [
        np.array([[-0.1, 0.2, 0.5, 1.3], [0.1, 0.1, 0.4, 0.4]]),
        np.array([[0.2, 0.2, 0.2, 0.6], [1.1, 0.1, 1.2, 0.4],
                  [0.1, 0.1, 0.4, 0.45]])
    ]
    s = [np.array([0.9, 0.8]), np.array([0.7, 0.6, 0.5])]
    lab = [np.array([0, 0]), np.array([0, 0, 0])]
    one, _ = LIST_FNS[name]
    with pytest.warns(UserWarning) as rec:
        ours = one(b, s, lab)
    msgs = [str(r.message) for r in rec]
    assert any('clipped 2 box(es)' in m and '{0: 1, 1: 1}' in m
               for m in msgs), msgs
    assert any('skipped 2 zero-area box(es)' in m for m in msgs), msgs
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        ref = {
            'wbf': eb.weighted_boxes_fusion,
            'nms': eb.nms,
            'nmw': eb.non_maximum_weighted,
            'soft_nms': eb.soft_nms
        }[name]([x.copy() for x in b], [x.copy() for x in s], lab)
    _eq(ref, ours, exact=False)  # same repair as ensemble-boxes


TWO = [np.array([[.1, .1, .2, .2], [.5, .5, .6, .6]])], [np.array([.9, .8])]


@pytest.mark.parametrize('call,error,msg', [
    # the crashes and backend disagreements of issue 21
    (lambda: mo.weighted_boxes_fusion(*TWO, [np.array([0., 1e19])]),
     ValueError, r"member 0, box 1: field 'labels' is not within"),
    (lambda: mo.weighted_boxes_fusion(*TWO, [np.array([-2**63, 2**63 - 1])]),
     ValueError, r"member 0, box 0: field 'labels' is not within"),
    (lambda: mo.nms_packed(
        mo.PackedDetections(torch.zeros(0, 4), torch.zeros(0),
                            torch.zeros(0, dtype=torch.long),
                            torch.zeros(0, dtype=torch.long), None, 1, -1)),
     ValueError, 'num_images must be >= 0, got -1'),
    (lambda: mo.soft_nms(*TWO, [np.array([0, 0])], sigma=0), ValueError,
     'sigma must be finite and > 0'),
    (lambda: mo.weighted_boxes_fusion(*TWO, [np.array([0, 0])],
                                      iou_thr=None), TypeError,
     'iou_thr must be a real number'),
    (lambda: mo.match_boxes(
        mo.PackedDetections(torch.tensor([[.1, .1, .2, .2]] * 2).double(),
                            torch.ones(2).double(),
                            torch.tensor([0., 1e300], dtype=torch.float64),
                            torch.zeros(2).long(), None, 1)), ValueError,
     r"box 1: field 'labels' is not within"),
    # unclear errors before: pybind / numpy / comparison messages
    (lambda: mo.nms([None], [np.array([.5])], [np.array([0])]), TypeError,
     "member 0: field 'boxes' must hold real numbers, got NoneType"),
    (lambda: mo.nms([[['a', 'b', 'c', 'd']]], [[.5]], [[0]]), TypeError,
     "member 0: field 'boxes' must hold real numbers"),
    (lambda: mo.weighted_boxes_fusion([[[.1, .1, .2, .2], [.1, .2]]],
                                      [[.5, .6]], [[0, 0]]), ValueError,
     "member 0: field 'boxes' is a ragged list"),
    (lambda: mo.nms_batch([(*TWO, [np.array([0, 0])]), (TWO[0], None,
                                                      [[0, 0]])]),
     TypeError, "image 1: field 'scores' must be a list"),
    (lambda: mo.soft_nms(*TWO, [np.array([0, 0])], iou_thr=float('nan')),
     ValueError, r'iou_thr must be in \[0, 1\]'),
    (lambda: mo.nms(*TWO, [np.array([0, 0])], iou_thr=1.5), ValueError,
     r'iou_thr must be in \[0, 1\]'),
    (lambda: mo.soft_nms(*TWO, [np.array([0, 0])], thresh=float('nan')),
     ValueError, 'thresh must be finite'),
    (lambda: mo.non_maximum_weighted(*TWO, [np.array([0, 0])],
                                     skip_box_thr=-1), ValueError,
     'skip_box_thr must be finite and >= 0'),
    (lambda: mo.weighted_boxes_fusion(*TWO, [np.array([0, 0])],
                                      conf_type='mean'), ValueError,
     'conf_type must be one of'),
    (lambda: mo.weighted_boxes_fusion_packed(
        mo.PackedDetections(torch.rand(0, 4), torch.rand(0),
                            torch.zeros(0), torch.zeros(0).long(), None, 1,
                            1.5)), TypeError, 'num_images must be an int'),
    (lambda: mo.weighted_boxes_fusion_packed(
        mo.PackedDetections(torch.rand(0, 4), torch.rand(0),
                            torch.zeros(0), torch.zeros(0), None, 1)),
     TypeError, "field 'members' must have an integer dtype"),
    (lambda: mo.weighted_boxes_fusion_packed(
        mo.PackedDetections(torch.rand(0, 4), torch.rand(0),
                            torch.zeros(0), torch.zeros(0).long(), None, 1),
        iou=0.5), TypeError, "unexpected keyword argument 'iou'"),
])
def test_mistakes_raise_one_line_naming_the_argument(call, error, msg):
    with pytest.raises(error, match=msg) as e:
        call()
    assert '\n' not in str(e.value)


def test_labels_far_apart_fuse_like_dense_labels():
    """Labels up to 2**53 - 1 in magnitude group like any other labels (no
    overflow of the group key) and come back exactly (NMW: as float32, like
    ensemble-boxes)."""
    big = np.array([-(2**53 - 1), 0, 2**53 - 1])  # same order as 0, 1, 2
    boxes = [np.array([[.1, .1, .4, .4]] * 3)] * 2
    scores = [np.array([.9, .8, .7]), np.array([.6, .5, .4])]
    for fn in LIST_FNS.values():
        got = fn[0](boxes, scores, [big, big])
        ref = fn[0](boxes, scores, [np.arange(3)] * 2)
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])
        want = big[ref[2].astype(int)].astype(got[2].dtype)
        np.testing.assert_array_equal(got[2], want)
