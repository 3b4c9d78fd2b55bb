"""The list API's compiled packer (mmens/ops/csrc/pack_lists.cpp) against the
Python packer it stands in for (mmens/ops/listapi.py)."""
import warnings

import numpy as np
import pytest
import torch

import mmens.ops as mo
from mmens.ops import kernel
from mmens.ops.listapi import pack_images
from mmens.ops.validation import repair_boxes

pytestmark = pytest.mark.skipif(not kernel.kernel_available(),
                                reason='the compiled kernel is not built')


def _member(rng, form: int):
    """One member's (boxes, scores, labels) in one of the forms read in C++."""
    n = int(rng.integers(0, 6))
    xy = rng.uniform(-0.1, 0.9, (n, 2))
    b = np.concatenate([xy, xy + rng.uniform(0, 0.3, (n, 2))], 1)
    if n > 1:
        b[1, 2] = b[1, 0]  # zero area
    s = rng.uniform(0, 1, n)
    lab = rng.integers(-3, 4, n)
    if form == 1:
        return b.astype(np.float32), s.astype(np.float32), lab.astype(np.int32)
    if form == 2:  # plain Python lists, integer labels
        return b.tolist(), s.tolist(), lab.tolist()
    if form == 3:  # strided views, float labels
        wide = np.zeros((n, 6))
        wide[:, 1:5] = b
        return wide[:, 1:5], np.repeat(s, 2)[::2], lab.astype(np.float64)
    return b, s, lab


def _images(seed: int, num_images: int = 6, members: int = 3) -> list:
    rng = np.random.default_rng(seed)
    images = []
    for i in range(num_images):
        ms = [_member(rng, (i * seed + t) % 4) for t in range(members)]
        images.append(tuple(list(x) for x in zip(*ms)))
    return images


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_compiled_packer_equals_python_packer(seed):
    images = _images(seed)
    fast = pack_images(images)
    with kernel.backend('torch'):  # the Python packer
        slow = pack_images(images)
    assert getattr(fast.dets, 'repair', None) is not None
    assert getattr(slow.dets, 'repair', None) is None
    d, r = fast.dets, slow.dets
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        boxes, keep = repair_boxes(r.boxes, r.members)
    assert torch.equal(d.boxes, boxes) and torch.equal(d.repair.keep, keep)
    assert torch.equal(d.scores, r.scores)
    assert d.labels.dtype == torch.long and torch.equal(d.labels,
                                                        r.labels.long())
    for k in ('members', 'images'):
        assert torch.equal(getattr(d, k), getattr(r, k))
    assert (d.num_members, d.num_images) == (r.num_members, r.num_images)
    assert fast.np_dtypes == slow.np_dtypes
    outside = ((r.boxes < 0) | (r.boxes > 1)).any(1)
    for got, mask in ((d.repair.clipped, outside), (d.repair.zero_area, ~keep)):
        want = torch.bincount(r.members[mask], minlength=r.num_members)
        assert torch.equal(got, want)


@pytest.mark.parametrize('name', ['weighted_boxes_fusion', 'nms', 'soft_nms',
                                  'non_maximum_weighted'])
def test_list_api_outputs_and_warnings_equal_both_packers(name):
    images = _images(3, num_images=4)
    fn = getattr(mo, name + '_batch')
    runs = []
    for be in ('auto', 'torch'):
        with kernel.backend(be), warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            runs.append((fn(images), [str(x.message) for x in w]))
    (fast, wf), (slow, ws) = runs
    assert wf == ws and len(wf) == 2  # clipped, zero area
    for a, b in zip(fast, slow):
        for x, y in zip(a, b):
            assert x.dtype == y.dtype
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-12)


def _bad_cases():
    b, s, lab = np.array([[0.1, 0.1, 0.5, 0.5]]), np.array([0.5]), np.array([1])
    return {
        'nan box': ([np.array([[np.nan, 0.1, 0.5, 0.5]])], [s], [lab]),
        'x2 < x1': ([np.array([[0.6, 0.1, 0.5, 0.5]])], [s], [lab]),
        'score > 1': ([b], [np.array([1.5])], [lab]),
        'float label': ([b], [s], [np.array([1.5])]),
        'label 2**53': ([b], [s], [np.array([2**53])]),
        'bool scores': ([b], [np.array([True])], [lab]),
        'None member': ([b], [None], [lab]),
        'strings': ([b], [['a']], [lab]),
        'ragged': ([[[0.1, 0.1, 0.5]]], [[0.5]], [[1]]),
        'count': ([b], [np.array([0.5, 0.6])], [lab]),
        'members': ([b, b], [s], [lab]),
        'field not a list': (b, [s], [lab]),
    }


@pytest.mark.parametrize('case', sorted(_bad_cases()))
def test_mistakes_left_to_the_python_packer_same_error(case):
    img = _bad_cases()[case]
    assert kernel._ext.pack_lists([img]) is None
    errors = []
    for be in ('auto', 'torch'):
        with kernel.backend(be), pytest.raises((TypeError, ValueError)) as e:
            mo.weighted_boxes_fusion(*img)
        errors.append((type(e.value), str(e.value)))
    assert errors[0] == errors[1]


def test_other_inputs_left_to_the_python_packer():
    b, s, lab = np.array([[0.1, 0.1, 0.5, 0.5]]), np.array([0.5]), np.array([1])
    for img in [([torch.tensor(b)], [s], [lab]),
                ([b.astype('>f8')], [s], [lab]),
                ([b], [s], [lab.astype(np.uint8)]),
                ([b], [[np.float64(0.5)]], [lab])]:
        assert kernel._ext.pack_lists([img]) is None
        ours = mo.weighted_boxes_fusion(*img)
        with kernel.backend('torch'):
            ref = mo.weighted_boxes_fusion(*img)
        for x, y in zip(ours, ref):
            assert type(x) is type(y)
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert kernel._ext.pack_lists('not a list') is None
    assert kernel._ext.pack_lists([(b, s)]) is None
