"""The compiled CPU kernel (mmens._ext) gives bit-for-bit the outputs of the
pure-torch path, on every option, with ties, zero scores and threads."""
import warnings

import numpy as np
import pytest
import torch

import mmens.ops as mo
from mmens.ops import kernel

N_MEMBERS = 5


def make_dets(seed, images=24, ties=False, zeros=False):
    """Jittered copies of a few objects per image, some members empty.
    ``ties``: scores rounded to 0.05 and duplicated boxes across members;
    ``zeros``: a fifth of the scores set to 0."""
    g = torch.Generator().manual_seed(seed)
    boxes, scores, labels, members, imgs = [], [], [], [], []
    for i in range(images):
        k = int(torch.randint(1, 6, (1, ), generator=g))
        ctr = torch.rand(k, 2, generator=g) * 0.6 + 0.2
        wh = torch.rand(k, 2, generator=g) * 0.3 + 0.02
        cls = torch.randint(0, 4, (k, ), generator=g)
        for m in range(N_MEMBERS):
            n = int(torch.randint(0, 30, (1, ), generator=g))
            o = torch.randint(0, k, (n, ), generator=g)
            c = ctr[o] + torch.randn(n, 2, generator=g) * 0.03
            s = wh[o] * (1 + 0.2 * torch.randn(n, 2, generator=g)).abs()
            b = torch.cat((c - s / 2, c + s / 2), 1).clamp(0, 1)
            if ties and m > 0 and n:  # exact copies of member 0's boxes
                b[:n // 2] = torch.round(b[:n // 2] * 20) / 20
            sc = torch.rand(n, generator=g)
            if ties:
                sc = torch.round(sc * 20) / 20
            if zeros:
                sc[torch.rand(n, generator=g) < 0.2] = 0
            lab = torch.where(
                torch.rand(n, generator=g) < 0.8, cls[o],
                torch.randint(0, 4, (n, ), generator=g))
            keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
            boxes.append(b[keep].double())
            scores.append(sc[keep].double())
            labels.append(lab[keep])
            members.append(torch.full((int(keep.sum()), ), m))
            imgs.append(torch.full((int(keep.sum()), ), i))
    return mo.PackedDetections(torch.cat(boxes), torch.cat(scores),
                               torch.cat(labels), torch.cat(members),
                               torch.cat(imgs), N_MEMBERS, images)


def both(fn, *args, **kwargs):
    out = {}
    for name in ('cpp', 'torch'):
        with kernel.backend(name), warnings.catch_warnings():
            warnings.simplefilter('ignore')
            out[name] = fn(*args, **kwargs)
    return out['cpp'], out['torch']


def assert_identical(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert torch.equal(x, y)  # bit for bit (no tolerance)


WEIGHTS = [None, [2.0, 1.0, 0.5, 1.5, 3.0]]


@pytest.mark.parametrize('conf_type', mo.CONF_TYPES)
@pytest.mark.parametrize('case', ['plain', 'ties', 'zeros'])
def test_wbf_identical(conf_type, case):
    dets = make_dets(1, ties=case == 'ties', zeros=case == 'zeros')
    for i, w in enumerate(WEIGHTS):
        for overflow, agnostic, skip, thr in [(False, False, 0.0, 0.55),
                                              (True, True, 0.3, 0.3),
                                              (bool(i), False, 0.1, 0.0)]:
            kw = dict(weights=w, iou_thr=thr, skip_box_thr=skip,
                      conf_type=conf_type, allows_overflow=overflow,
                      class_agnostic=agnostic)
            assert_identical(*both(mo.weighted_boxes_fusion_packed, dets,
                                   **kw))


@pytest.mark.parametrize('case', ['plain', 'ties', 'zeros'])
def test_nmw_nms_soft_nms_identical(case):
    dets = make_dets(2, ties=case == 'ties', zeros=case == 'zeros')
    for w in WEIGHTS:
        for agnostic in (False, True):
            kw = dict(weights=w, class_agnostic=agnostic)
            assert_identical(*both(mo.non_maximum_weighted_packed, dets,
                                   iou_thr=0.5, skip_box_thr=0.1, **kw))
            assert_identical(*both(mo.nms_packed, dets, iou_thr=0.45, **kw))
            for method in (1, 2, 3):
                assert_identical(*both(mo.soft_nms_packed, dets,
                                       method=method, iou_thr=0.4, sigma=0.3,
                                       thresh=0.01, **kw))


def test_soft_nms_decayed_scores_close():
    """Several decays per score: only the decayed scores may differ, by the
    accumulated rounding of the gaussian factors (kernel.py's contract)."""
    dets = make_dets(3)
    for method in (1, 2):
        a, b = both(mo.soft_nms_packed, dets, method=method,
                    return_decayed_scores=True)
        for i in (0, 2, 3):
            assert torch.equal(a[i], b[i])
        if method == 1:
            assert torch.equal(a[1], b[1])
        torch.testing.assert_close(a[1], b[1], rtol=1e-14, atol=0)


def ulps(a, b):
    """Distance in units in the last place of float64 tensors (same sign)."""
    return (a.view(torch.int64) - b.view(torch.int64)).abs()


def test_numerical_contract_gaussian_decay_within_one_ulp():
    """One decay per image: a box of score 1 then one of score 0.5, so the
    decayed score is exactly half the gaussian factor of their IoU, and the
    factors of the two backends are compared directly."""
    g = torch.Generator().manual_seed(7)
    n = 3000
    a = torch.rand(n, 2, generator=g) * 0.4
    first = torch.cat((a, a + 0.3), 1)  # [n, 4]
    second = first + (torch.rand(n, 4, generator=g) - 0.5) * 0.2
    second[:, 2:] = torch.maximum(second[:, 2:], second[:, :2] + 0.01)
    boxes = torch.stack((first, second), 1).reshape(-1, 4).double()
    dets = mo.PackedDetections(
        boxes, torch.tensor([1.0, 0.5]).repeat(n).double(),
        torch.zeros(2 * n, dtype=torch.long),
        torch.tensor([0, 1]).repeat(n), torch.arange(n).repeat_interleave(2),
        2, n)
    for sigma in (0.05, 0.3, 1.0):
        cpp, ref = both(mo.soft_nms_packed, dets, sigma=sigma, thresh=0.0,
                        return_decayed_scores=True)
        for i in (0, 2, 3):
            assert torch.equal(cpp[i], ref[i])
        decayed = ref[1] < 1
        assert int(decayed.sum()) > n // 2  # most pairs overlap
        assert int(ulps(cpp[1], ref[1]).max()) <= kernel.SOFT_NMS_DECAY_ULPS


@pytest.mark.parametrize('member_reduce', ['mean', 'best'])
def test_match_boxes_identical(member_reduce):
    """Training's matching into Y_hat goes through the kernel as well."""
    dets = make_dets(4, ties=True)
    a, b = both(mo.match_boxes, dets, weights=WEIGHTS[1],
                member_reduce=member_reduce)
    assert_identical(a, b)


def test_list_api_and_threads_identical():
    """The list API, and 1 thread against 2 on a load big enough to run the
    groups in parallel."""
    dets = make_dets(5, images=300)
    assert dets.boxes.shape[0] > 4096  # above the kernel's parallel cut
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = both(mo.weighted_boxes_fusion_packed, dets)
        torch.set_num_threads(2)
        two = both(mo.weighted_boxes_fusion_packed, dets)
    finally:
        torch.set_num_threads(old)
    assert_identical(one[0], one[1])
    assert_identical(one[0], two[0])
    rng = np.random.default_rng(0)
    imgs = [([rng.random((4, 4)).cumsum(1) / 4 for _ in range(3)],
             [rng.random(4) for _ in range(3)],
             [rng.integers(0, 2, 4) for _ in range(3)]) for _ in range(5)]
    for fn in (mo.weighted_boxes_fusion_batch, mo.nms_batch,
               mo.soft_nms_batch, mo.non_maximum_weighted_batch):
        a, b = both(fn, imgs)
        for x, y in zip(a, b):
            for u, v in zip(x, y):
                assert u.dtype == v.dtype and np.array_equal(u, v)


def test_missing_kernel_falls_back_with_one_warning(monkeypatch):
    dets = make_dets(6, images=5)
    with kernel.backend('torch'):
        expected = mo.weighted_boxes_fusion_packed(dets)
    monkeypatch.setattr(kernel, '_ext', None)
    monkeypatch.setitem(kernel._state, 'warned', False)
    with pytest.warns(UserWarning, match='kernel not built') as rec:
        got = mo.weighted_boxes_fusion_packed(dets)
        mo.weighted_boxes_fusion_packed(dets)
    assert len([r for r in rec if 'kernel' in str(r.message)]) == 1
    assert '\n' not in str(rec[0].message)
    assert_identical(got, expected)
    with kernel.backend('cpp'), pytest.raises(RuntimeError,
                                              match='make setup'):
        mo.weighted_boxes_fusion_packed(dets)


def test_backend_names():
    assert kernel.kernel_available()  # `make setup` builds it
    with pytest.raises(ValueError, match='backend must be one of'):
        kernel.set_backend('numba')
    with kernel.backend('torch'):
        assert kernel.get_backend() == 'torch'
        assert not kernel.use_kernel(torch.zeros(1))
    assert kernel.get_backend() == 'auto'


def test_bad_backend_variable_warns_in_one_line(monkeypatch):
    monkeypatch.setenv('MMENS_OPS_BACKEND', 'numba')
    with pytest.warns(UserWarning, match="MMENS_OPS_BACKEND='numba'") as rec:
        assert kernel._backend_from_env() == 'auto'
    assert '\n' not in str(rec[0].message)


def _ext_args(m=2, scores=None, labels=None, images=None, num_images=1):
    """boxes, scores, labels, images, keep, num_images of a direct call."""
    boxes = torch.tensor([[.1, .1, .5, .5], [.1, .1, .5, .6]]).double()[:m]
    return (boxes, torch.rand(m).double() if scores is None else scores,
            torch.zeros(m, dtype=torch.long) if labels is None else labels,
            torch.zeros(m, dtype=torch.long) if images is None else images,
            torch.ones(m, dtype=torch.bool), num_images)


def _wbf(args, members, weights):
    """A direct ``_ext.wbf`` call on ``_ext_args`` (avg, with clusters)."""
    b, s, lab, img, keep, num_images = args
    return kernel._ext.wbf(b, s, lab, members, img, keep, weights, num_images,
                           0.55, 0.0, 0, False, False, float(weights.sum()),
                           1.0, True)


@pytest.mark.parametrize('args,msg', [
    (_ext_args(1, scores=torch.rand(3).double()), 'must have the M = 1'),
    (_ext_args(0, num_images=-1), 'num_images must be >= 0'),
    (_ext_args(images=torch.tensor([0, 3])), r'images\[1\] = 3 is outside'),
    (_ext_args(images=torch.tensor([-1, 0])), r'images\[0\] = -1 is outside'),
])
def test_kernel_checks_its_preconditions(args, msg):
    """A direct call with inconsistent arguments raises instead of reading
    out of bounds (the segfault and over-read of issue 21)."""
    ext = kernel._ext
    with pytest.raises(RuntimeError, match=msg):
        ext.nms(*args, 0.5, False)
    with pytest.raises(RuntimeError, match=msg):
        ext.nmw(*args, 0.5, False)
    with pytest.raises(RuntimeError, match=msg):
        ext.soft_nms(*args, 2, 0.5, 0.5, 0.001, False)
    with pytest.raises(RuntimeError, match=msg):
        _wbf(args, torch.zeros(args[0].shape[0]).long(), torch.ones(1).double())


def test_kernel_checks_parameters_and_members():
    ext = kernel._ext
    args = _ext_args()
    for thr in (float('nan'), -0.1, 1.5):
        with pytest.raises(RuntimeError, match='iou_thr must be in'):
            ext.nms(*args, thr, False)
    with pytest.raises(RuntimeError, match='sigma must be finite and > 0'):
        ext.soft_nms(*args, 2, 0.5, 0.0, 0.001, False)
    with pytest.raises(RuntimeError, match=r'members\[1\] = 2 is outside'):
        _wbf(args, torch.tensor([0, 2]), torch.ones(2).double())
    with pytest.raises(RuntimeError, match='boxes must be'):
        ext.nms(torch.rand(2, 3).double(), *args[1:], 0.5, False)


def test_kernel_labels_at_the_int64_extremes_group_like_dense_labels():
    """No overflow and no buffer sized by the label span (std::length_error
    aborted the process before)."""
    ext = kernel._ext
    scores = torch.tensor([0.3, 0.7]).double()
    for lab in ([-2**63, 2**63 - 1], [2**62, -2**62]):
        lab = torch.tensor(lab)
        extreme = _ext_args(scores=scores, labels=lab)
        dense = _ext_args(scores=scores, labels=lab.argsort().argsort())
        for a, b in zip(ext.nms(*extreme, 0.5, False),
                        ext.nms(*dense, 0.5, False)):
            assert torch.equal(a, b)
        fused = ext.nmw(*extreme, 0.5, False)
        assert fused[0].shape == (2, 4)  # two groups, one box each
        assert sorted(fused[2].tolist()) == sorted(lab.tolist())
