"""Tests for mmens.ops.targets: COCO-style greedy matching of fused clusters to GT."""
import pytest
import torch

from mmens.ops.boxes import box_iou
from mmens.ops.targets import assign_targets
from mmens.ops.theta import j_cls, j_reg, theta_fuse

L = torch.long


def T(x, dtype=torch.float32):
    return torch.as_tensor(x, dtype=dtype)


def run(boxes, scores, labels, imgs, gts, gt_labels, gt_imgs, **kw):
    return assign_targets(T(boxes).reshape(-1, 4), T(scores), T(labels, L), T(imgs, L),
                          T(gts).reshape(-1, 4), T(gt_labels, L), T(gt_imgs, L), **kw)


def test_greedy_by_score_not_by_iou():
    gt = [[0, 0, 1, 1]]
    # cluster 1 fits better but cluster 0 scores higher: cluster 0 takes the GT
    r = run([[0, 0, 1, 0.8], [0, 0, 1, 0.95]], [0.9, 0.5], [0, 0], [0, 0], gt, [0], [0])
    assert r.matched_gt.tolist() == [0, -1]  # one GT is never matched twice
    assert r.y_cls.tolist() == [1, 0]
    assert r.iou[0].item() == pytest.approx(0.8) and r.iou[1] == 0
    assert r.max_iou.tolist() == pytest.approx([0.8, 0.95])
    torch.testing.assert_close(r.y_box, T([[0, 0, 1, 1], [0, 0, 0, 0]]))
    # reversing the scores reverses the winner
    r = run([[0, 0, 1, 0.8], [0, 0, 1, 0.95]], [0.5, 0.9], [0, 0], [0, 0], gt, [0], [0])
    assert r.matched_gt.tolist() == [-1, 0]


def test_best_still_unmatched_gt():
    gts = [[0, 0, 1, 1], [0, 0, 1, 0.7]]
    # c0 (top score): IoU .9 with g0 and .778 with g1 → g0; c1: IoU .95/.737 → g0 taken → g1
    r = run([[0, 0, 1, 0.9], [0, 0, 1, 0.95]], [0.9, 0.8], [3, 3], [0, 0], gts, [3, 3], [0, 0])
    assert r.matched_gt.tolist() == [0, 1]
    assert r.iou[1].item() == pytest.approx(0.7 / 0.95)


def test_threshold_inclusive():
    r = run([[0, 0, 1, 0.5]], [0.5], [0], [0], [[0, 0, 1, 1]], [0], [0], iou_thr=0.5)
    assert r.matched_gt.tolist() == [0]  # IoU == thr matches (COCOeval)
    r = run([[0, 0, 1, 0.5]], [0.5], [0], [0], [[0, 0, 1, 1]], [0], [0], iou_thr=0.51)
    assert r.matched_gt.tolist() == [-1] and r.max_iou.item() == pytest.approx(0.5)


def test_class_aware_and_cross_image():
    box = [[0.1, 0.1, 0.5, 0.5]]
    r = run(box * 3, [0.9, 0.8, 0.7], [0, 1, 0], [0, 0, 1], box * 2, [1, 0], [0, 1])
    # c0: class 0 img 0 → no GT there; c1: class 1 img 0 → g0; c2: class 0 img 1 → g1
    assert r.matched_gt.tolist() == [-1, 0, 1]
    assert r.max_iou.tolist() == pytest.approx([0, 1, 1])
    r = run(box, [0.9], [0], [0], box, [0], [1])  # same box, other image
    assert r.matched_gt.tolist() == [-1] and r.max_iou.item() == 0


def test_crowd_never_positive():
    crowd = [0, 0, 1, 1]
    small = [0, 0, 0.3, 0.3]  # IoU .09 with the crowd box but IoF 1 → ignored
    r = run([small, [1.5, 1.5, 1.6, 1.6], small], [0.9, 0.8, 0.7], [0, 0, 0], [0, 0, 0],
            [crowd, [0, 0, 0.3, 0.3]], [0, 0], [0, 0], gt_ignore=T([True, False], torch.bool))
    assert r.matched_gt.tolist() == [1, -1, -1]  # the real GT, not the crowd, wins
    assert r.ignored.tolist() == [False, False, True]  # crowd may absorb many clusters
    assert r.y_cls.tolist() == [1, 0, 0]
    assert r.max_iou.tolist() == pytest.approx([1, 0, 1])  # crowd excluded from max_iou


def test_empty_inputs():
    none4 = torch.zeros(0, 4)
    none = torch.zeros(0, dtype=L)
    r = assign_targets(none4, torch.zeros(0), none, none, none4, none, none)
    assert r.y_cls.shape == (0,) and r.y_box.shape == (0, 4)
    r = run([[0, 0, 1, 1]], [0.9], [0], [0], torch.zeros(0, 4), torch.zeros(0), torch.zeros(0))
    assert r.matched_gt.tolist() == [-1] and r.y_cls.tolist() == [0]
    r = assign_targets(none4, torch.zeros(0), none, none, T([[0, 0, 1, 1]]), T([0], L), T([0], L))
    assert r.matched_gt.shape == (0,)


def test_shape_errors_and_no_grad():
    b = torch.rand(3, 4, requires_grad=True)
    s, lab = torch.rand(3), torch.zeros(3, dtype=L)
    with pytest.raises(ValueError, match='fused_boxes'):
        assign_targets(b[:, :3], s, lab, lab, b.detach(), lab, lab)
    with pytest.raises(ValueError, match='gt_ignore'):
        assign_targets(b, s, lab, lab, b.detach(), lab, lab, gt_ignore=torch.zeros(2, dtype=bool))
    with pytest.raises(ValueError, match='image_index'):
        assign_targets(b, s, lab, lab[:2], b.detach(), lab, lab)
    r = assign_targets(b, s, lab, lab, b.detach(), lab, lab)
    assert not r.y_box.requires_grad and not r.iou.requires_grad


def reference(boxes, scores, labels, imgs, gts, gl, gi, ign, thr):
    """Plain per-box loop following COCOeval.evaluateImg (no area ranges)."""
    c = len(scores)
    matched, miou, mx, ignored = [-1] * c, [0.] * c, [0.] * c, [False] * c
    taken = set()
    for ci in sorted(range(c), key=lambda i: (-scores[i].item(), i)):
        best, arg = -1., -1
        for gj in range(len(gl)):
            if gl[gj] != labels[ci] or gi[gj] != imgs[ci]:
                continue
            iou = box_iou(boxes[ci:ci + 1], gts[gj:gj + 1])[0, 0].item()
            if ign[gj]:
                iof = box_iou(boxes[ci:ci + 1], gts[gj:gj + 1], mode='iof')[0, 0].item()
                ignored[ci] |= iof >= thr
                continue
            mx[ci] = max(mx[ci], iou)
            if gj not in taken and iou > best:
                best, arg = iou, gj
        if best >= thr:
            matched[ci], miou[ci] = arg, best
            taken.add(arg)
            ignored[ci] = False
    return matched, miou, mx, ignored


@pytest.mark.parametrize('seed,budget', [(0, 1 << 22), (1, 1 << 22), (2, 7), (3, 50)])
def test_random_against_reference(seed, budget):
    g = torch.Generator().manual_seed(seed)
    n_img, n_cls, c, n_gt = 4, 3, 120, 30
    centres = torch.rand(n_gt, 2, generator=g) * 0.8 + 0.1
    gts = torch.cat([centres - 0.08, centres + 0.08], 1)  # [G, 4]
    gl, gi = torch.randint(0, n_cls, (n_gt,), generator=g), torch.randint(0, n_img, (n_gt,),
                                                                             generator=g)
    ign = torch.rand(n_gt, generator=g) < 0.15
    src = torch.randint(0, n_gt, (c,), generator=g)  # clusters jittered around GT
    boxes = gts[src] + 0.04 * torch.randn(c, 4, generator=g)
    labels = torch.where(torch.rand(c, generator=g) < 0.8, gl[src], torch.randint(0, n_cls, (c,),
                                                                                  generator=g))
    imgs = torch.where(torch.rand(c, generator=g) < 0.9, gi[src], torch.randint(0, n_img, (c,),
                                                                                 generator=g))
    scores = torch.rand(c, generator=g)
    r = assign_targets(boxes, scores, labels, imgs, gts, gl, gi, 0.5, ign, budget=budget)
    m, miou, mx, ignored = reference(boxes, scores, labels, imgs, gts, gl, gi, ign, 0.5)
    assert r.matched_gt.tolist() == m
    assert 10 < sum(x >= 0 for x in m) < c  # a non-trivial case
    torch.testing.assert_close(r.iou, T(miou))
    torch.testing.assert_close(r.max_iou, T(mx))
    assert r.ignored.tolist() == ignored
    hit = r.matched_gt >= 0
    torch.testing.assert_close(r.y_box[hit], gts[r.matched_gt[hit]])
    assert (r.y_box[~hit] == 0).all() and (r.y_cls == hit.float()).all()
    assert len(set(r.matched_gt[hit].tolist())) == int(hit.sum())  # each GT at most once
    assert not (ign[r.matched_gt[hit]]).any()


def test_empty_gt_gives_cls_loss_only():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(5, 2, 2, generator=g) * 0.5
    y_hat = torch.cat([xy, xy + 0.2, torch.rand(5, 2, 1, generator=g) * 0.8 + 0.1], -1)
    mask = torch.ones(5, 2, dtype=torch.bool)
    theta = torch.full((2,), 0.5, requires_grad=True)
    boxes, scores = theta_fuse(y_hat, mask, theta)
    r = assign_targets(boxes, scores, torch.zeros(5, dtype=L), torch.zeros(5, dtype=L),
                       torch.zeros(0, 4), torch.zeros(0, dtype=L), torch.zeros(0, dtype=L))
    lreg = j_reg(boxes, r.y_box, r.y_cls > 0)
    lcls = j_cls(theta, y_hat[..., 4], mask, r.y_cls)
    assert lreg.item() == 0 and lcls.item() > 0
    (lreg + lcls).backward()
    assert torch.isfinite(theta.grad).all()
