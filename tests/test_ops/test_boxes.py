"""Tests of mmens.ops.boxes (IoU, conversions, (de)normalisation)."""
import numpy as np
import pytest
import torch

from mmens.ops import (box_area, box_iou, denormalize_boxes,
                       normalize_boxes, xywh_to_xyxy, xyxy_to_xywh)


def _iou_np(a, b):
    xa, ya = max(a[0], b[0]), max(a[1], b[1])
    xb, yb = min(a[2], b[2]), min(a[3], b[3])
    inter = max(xb - xa, 0) * max(yb - ya, 0)
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area_a + area_b - inter)


def _rand_boxes(n, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.7
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.3 + 0.01
    return torch.cat([xy, xy + wh], 1)


def test_box_iou_matches_reference_formula():
    a, b = _rand_boxes(7, 0), _rand_boxes(5, 1)
    iou = box_iou(a, b)
    assert iou.shape == (7, 5)
    for i in range(7):
        for j in range(5):
            # float64, same operation order as ensemble-boxes: bit-exact
            assert iou[i, j].item() == _iou_np(a[i].tolist(), b[j].tolist())
    assert torch.equal(box_iou(a[:5], b, aligned=True), iou[:5].diagonal())


def test_box_iou_known_values():
    a = torch.tensor([[0., 0., 2., 2.]])
    b = torch.tensor([[1., 1., 3., 3.], [2., 2., 3., 3.], [0., 0., 2., 2.]])
    assert torch.allclose(box_iou(a, b), torch.tensor([[1 / 7, 0., 1.]]))
    assert torch.equal(box_area(b), torch.tensor([4., 1., 4.]))


def test_box_iou_aligned_iof_degenerate_and_batched():
    f = torch.float32
    a = torch.tensor([[0, 0, 1, 1], [0, 0, 2, 2], [0, 0, 0, 0]], dtype=f)
    b = torch.tensor([[0, 0, 1, 0.5], [5, 5, 6, 6]], dtype=f)
    torch.testing.assert_close(box_iou(a, b),
                               torch.tensor([[0.5, 0], [0.125, 0], [0, 0]]))
    torch.testing.assert_close(box_iou(a[:2], b, aligned=True),
                               torch.tensor([0.5, 0]))
    torch.testing.assert_close(box_iou(b, a, mode='iof')[0],
                               torch.tensor([1., 1, 0]))
    # a degenerate (inverted) box has area 0; eps bounds the denominator
    inv = torch.tensor([[1., 1, 0, 0]])
    assert box_iou(inv, inv, eps=1e-9).item() == 0
    assert box_area(inv).item() == 0
    assert torch.isnan(box_iou(a[2:], a[2:])).all()  # 0 / 0 without eps
    # leading batch dims: one pairwise table per batch entry
    batch = torch.stack([a, a.flip(0)])  # [2, 3, 4]
    out = box_iou(batch, batch[:, :2])  # [2, 3, 2]
    assert out.shape == (2, 3, 2)
    torch.testing.assert_close(out[1], box_iou(a.flip(0), a.flip(0)[:2]),
                               rtol=0, atol=0, equal_nan=True)
    with pytest.raises(ValueError, match='mode'):
        box_iou(a, b, mode='giou')
    with pytest.raises(ValueError, match='end in 4'):
        box_iou(a[:, :3], b)


@pytest.mark.parametrize('n,m', [(0, 3), (3, 0), (0, 0)])
def test_box_iou_empty(n, m):
    out = box_iou(torch.zeros(n, 4), torch.zeros(m, 4, dtype=torch.float64))
    assert out.shape == (n, m) and out.dtype == torch.float64


@pytest.mark.parametrize('lib', ['torch', 'numpy'])
def test_xywh_roundtrip(lib):
    xywh = np.array([[10., 20., 30., 40.], [0., 0., 1., 1.]], dtype=np.float32)
    xyxy = np.array([[10., 20., 40., 60.], [0., 0., 1., 1.]], dtype=np.float32)
    arr = torch.from_numpy if lib == 'torch' else np.asarray
    out = xywh_to_xyxy(arr(xywh))
    assert type(out) is type(arr(xywh)) and out.dtype == arr(xywh).dtype
    np.testing.assert_array_equal(np.asarray(out), xyxy)
    back = xyxy_to_xywh(arr(xyxy))
    assert type(back) is type(arr(xyxy))
    np.testing.assert_array_equal(np.asarray(back), xywh)
    assert xywh_to_xyxy(arr(np.zeros((0, 4)))).shape == (0, 4)
    assert xyxy_to_xywh(arr(np.zeros((0, 4)))).shape == (0, 4)
    # a new array: the caller's boxes are never written
    src = arr(xywh.copy())
    xywh_to_xyxy(src)[0, 0] = -1
    np.testing.assert_array_equal(np.asarray(src), xywh)


def test_normalize_per_image_per_box_and_single():
    boxes = torch.tensor([[64., 48., 320., 240.], [10., 10., 20., 40.]],
                         dtype=torch.float64)
    sizes = torch.tensor([[640, 480], [100, 200]])
    per_img = normalize_boxes(boxes, sizes, torch.tensor([0, 1]))
    assert torch.equal(
        per_img,
        torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.1, 0.05, 0.2, 0.2]],
                     dtype=torch.float64))
    assert torch.equal(normalize_boxes(boxes, sizes), per_img)  # per box
    single = normalize_boxes(boxes, torch.tensor([640., 480.]))
    assert torch.allclose(single[0], per_img[0])
    back = denormalize_boxes(per_img, sizes, torch.tensor([0, 1]))
    assert torch.allclose(back, boxes)
    # same arithmetic as dividing in NumPy (used by the parity tests)
    ref = boxes.numpy() / np.array([[640, 480, 640, 480], [100, 200, 100, 200]
                                    ])
    assert np.array_equal(per_img.numpy(), ref)
    assert normalize_boxes(torch.zeros(0, 4), sizes).shape == (0, 4)
    with pytest.raises(ValueError, match='image_sizes'):
        normalize_boxes(boxes, torch.ones(3, 2))
