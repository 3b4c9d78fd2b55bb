import pytest
import torch

from mmens.ops.iou_thresholds import COCO_IOU_THRS, iou_threshold_misses
from mmens.ops.ranking import positive_weights

T = torch.tensor


def test_misses_count_cocos_iou_thresholds():
    gt = T([[0., 0, 10, 10]] * 4)
    # IoU 1, 0.72 (reaches .50-.70: 5 of 10), 0.52 (only .50), 0 (a box off its ground truth)
    boxes = T([[0., 0, 10, 10], [0, 0, 10, 7.2], [0, 0, 5.2, 10], [20, 20, 30, 30]])
    exact = iou_threshold_misses(boxes, gt, tau=1e-4)
    torch.testing.assert_close(exact, T([0.0, 0.5, 0.9, 1.0]))
    smooth = iou_threshold_misses(boxes, gt)  # tau 0.02: within 0.02 of the count here
    assert (smooth - exact).abs().max() < 0.02 and (smooth[:3] > exact[:3]).all()
    assert len(COCO_IOU_THRS) == 10 and COCO_IOU_THRS[-1] == pytest.approx(0.95)


def test_misses_are_batched_and_differentiable():
    gt = T([[0., 0, 10, 10], [5, 5, 15, 15]])
    boxes = T([[[0., 0, 9, 10], [5, 5, 15, 14]], [[0, 0, 10, 10], [5, 5, 15, 15]]])
    boxes.requires_grad_(True)
    out = iou_threshold_misses(boxes, gt)  # [2, 2]
    assert out.shape == (2, 2)
    torch.testing.assert_close(out[0], iou_threshold_misses(boxes[0], gt))
    out.sum().backward()
    assert boxes.grad[0, 0, 2] < 0  # widening the narrow box towards its ground truth helps


def test_misses_empty_input_and_bad_tau():
    assert iou_threshold_misses(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, )
    assert iou_threshold_misses(torch.zeros(3, 0, 4), torch.zeros(0, 4)).shape == (3, 0)
    with pytest.raises(ValueError, match=r'gt_boxes \[C, 4\], got \[2, 3, 4\] and \[2, 4\]'):
        iou_threshold_misses(torch.zeros(2, 3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match='tau must be > 0'):
        iou_threshold_misses(torch.zeros(1, 4), torch.zeros(1, 4), tau=0.0)


def test_positive_weights_per_positive_or_per_class():
    pos = T([True, True, True, False, True])
    labels = T([0, 0, 0, 1, 2])
    torch.testing.assert_close(positive_weights(pos, labels), T([0.25, 0.25, 0.25, 0, 0.25]))
    # two classes with positives: each weighs 1/2, split among its positives
    torch.testing.assert_close(positive_weights(pos, labels, class_balanced=True),
                               T([1 / 6, 1 / 6, 1 / 6, 0, 0.5]))
    assert positive_weights(T([False, False]), T([0, 1])).sum() == 0
    assert positive_weights(torch.zeros(0, dtype=torch.bool),
                            torch.zeros(0, dtype=torch.long)).numel() == 0
