"""Tests for mmens.ops.theta: Θ fusion (theory §2) and the objective (theory §4)."""
import pytest
import torch

from mmens.ops.theta import (WBF_CONF_TYPES, dtheta_dphi, fusion_loss, grad_j_cls,
                             grad_j_cons, grad_j_reg, j_cls, j_cons, j_reg, phi_from_theta,
                             theta_from_phi, theta_fuse, wbf_theta_fuse)

D = torch.float64


def rand_clusters(c, n, seed=0, p_present=0.7, dtype=D):
    """Random y_hat [C, N, 5] (valid normalised boxes, scores in (0.05, 0.95)) and mask."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(c, n, 2, generator=g, dtype=dtype) * 0.6
    wh = torch.rand(c, n, 2, generator=g, dtype=dtype) * 0.3 + 0.05
    p = torch.rand(c, n, 1, generator=g, dtype=dtype) * 0.9 + 0.05
    mask = torch.rand(c, n, generator=g) < p_present
    mask[:, 0] |= ~mask.any(1)  # at least one member per cluster
    y_hat = torch.cat([xy, xy + wh, p], -1) * mask.unsqueeze(-1)
    return y_hat, mask


# ----------------------------------------------------------------------------- fusion
def test_fuse_equals_seed_full_mask():
    y_hat, mask = rand_clusters(7, 4, p_present=1.1)
    assert mask.all()
    theta = torch.softmax(torch.randn(4, dtype=D), 0)  # ΣΘ = 1
    boxes, scores = theta_fuse(y_hat, mask, theta, score_mode='seed')
    seed = torch.einsum('cnk,n->ck', y_hat, theta)  # A = ŶᵀΘ per cluster
    torch.testing.assert_close(boxes, seed[:, :4])
    torch.testing.assert_close(scores, seed[:, 4])
    # normalize=False is ŶᵀΘ for any Θ
    theta2 = torch.rand(4, dtype=D) * 2
    boxes2, _ = theta_fuse(y_hat, mask, theta2, normalize=False)
    torch.testing.assert_close(boxes2, torch.einsum('cnk,n->ck', y_hat, theta2)[:, :4])


@pytest.mark.parametrize('mode', ['seed', 'normalized', 'noisy_or'])
def test_fuse_mask_equals_subset(mode):
    y_hat, _ = rand_clusters(5, 4, seed=1, p_present=1.1)
    theta = torch.rand(4, dtype=D) + 0.1
    mask = torch.tensor([True, False, True, False]).expand(5, 4)
    garbage = y_hat.clone()
    garbage[:, [1, 3]] = 123.  # absent rows must be ignored whatever they hold
    b, s = theta_fuse(garbage, mask, theta, score_mode=mode)
    sub = [0, 2]
    b2, s2 = theta_fuse(y_hat[:, sub], torch.ones(5, 2, dtype=torch.bool), theta[sub],
                        score_mode=mode)
    torch.testing.assert_close(b, b2)
    torch.testing.assert_close(s, s2)
    # renormalisation: a single present member gives exactly its own box
    one = torch.zeros(5, 4, dtype=torch.bool)
    one[:, 2] = True
    torch.testing.assert_close(theta_fuse(garbage, one, theta)[0], y_hat[:, 2, :4])


def test_fuse_score_modes_hand():
    y_hat = torch.tensor([[[0, 0, 1, 1, .4], [0, 0, 1, 1, .6]]], dtype=D)
    theta = torch.tensor([.5, 1.], dtype=D)
    full = torch.ones(1, 2, dtype=torch.bool)
    half = torch.tensor([[True, False]])
    expect = {'seed': (.8, .2), 'normalized': (.8 / 1.5, .4), 'noisy_or': (1 - .8 * .4, .2)}
    for mode, (e_full, e_half) in expect.items():
        assert theta_fuse(y_hat, full, theta, mode)[1].item() == pytest.approx(e_full)
        assert theta_fuse(y_hat, half, theta, mode)[1].item() == pytest.approx(e_half)


def test_fuse_per_cluster_rows_and_errors():
    y_hat, mask = rand_clusters(6, 3, seed=2)
    rows = torch.rand(6, 3, dtype=D) + 0.1
    b, s = theta_fuse(y_hat, mask, rows, 'noisy_or')
    for c in range(6):
        bc, sc = theta_fuse(y_hat[c:c + 1], mask[c:c + 1], rows[c], 'noisy_or')
        torch.testing.assert_close(b[c:c + 1], bc)
        torch.testing.assert_close(s[c:c + 1], sc)
    with pytest.raises(ValueError, match='theta'):
        theta_fuse(y_hat, mask, torch.ones(4, dtype=D))
    with pytest.raises(ValueError, match='mask'):
        theta_fuse(y_hat, mask[:, :2], rows)
    with pytest.raises(ValueError, match='y_hat'):
        theta_fuse(y_hat[..., :4], mask, rows)
    with pytest.raises(ValueError, match='score_mode'):
        theta_fuse(y_hat, mask, rows, 'max')
    with pytest.raises(ValueError, match='reduction'):
        j_reg(b, b, reduction='avg')


def test_empty_and_absent_members_finite():
    # C = 0
    y0, m0 = torch.zeros(0, 3, 5, dtype=D), torch.zeros(0, 3, dtype=torch.bool)
    theta = torch.full((3,), 1 / 3, dtype=D, requires_grad=True)
    losses = fusion_loss(y0, m0, theta, torch.zeros(0, dtype=D), torch.zeros(0, 4, dtype=D),
                         torch.zeros(0, dtype=torch.bool))
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(theta.grad).all()
    assert losses['loss_reg'] == 0 and losses['loss_cls'] == 0
    # member 2 never present, one cluster with no member at all, nothing matched
    y_hat, mask = rand_clusters(4, 3, seed=3)
    mask[:, 2] = False
    mask[1] = False
    y_hat = y_hat * mask.unsqueeze(-1)
    theta = torch.full((3,), 1 / 3, dtype=D, requires_grad=True)
    boxes, scores = theta_fuse(y_hat, mask, theta)
    assert (boxes[1] == 0).all() and scores[1] == 0
    losses = fusion_loss(y_hat, mask, theta, torch.zeros(4, dtype=D), torch.zeros(4, 4, dtype=D),
                         torch.zeros(4, dtype=torch.bool))
    assert losses['loss_reg'] == 0 and losses['loss_cls'] > 0
    sum(losses.values()).backward()
    assert torch.isfinite(theta.grad).all()
    # the absent member's gradient comes from J_cons only
    assert theta.grad[2].item() == pytest.approx(grad_j_cons(theta.detach())[2].item())


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize('normalize', [False, True])
def test_gradcheck_all_terms(normalize):
    y_hat, mask = rand_clusters(5, 3, seed=4)
    y_box = y_hat[:, 0, :4] + 0.01
    y = torch.tensor([1., 0., 1., 1., 0.], dtype=D)
    matched = y > 0
    p = y_hat[..., 4]

    def f(theta):
        a, s = theta_fuse(y_hat, mask, theta, score_mode='noisy_or', normalize=normalize)
        return (j_reg(a, y_box, matched) + j_cons(theta) + j_cls(theta, p, mask, y) + s.sum())

    for theta in (torch.rand(3, dtype=D) * 0.5 + 0.3, torch.rand(5, 3, dtype=D) * 0.5 + 0.3):
        assert torch.autograd.gradcheck(f, (theta.requires_grad_(),))


def _autograd(loss_fn, theta):
    theta = theta.clone().requires_grad_()
    (g,) = torch.autograd.grad(loss_fn(theta), theta)
    return g


@pytest.mark.parametrize('normalize', [False, True])
@pytest.mark.parametrize('full', [True, False])
def test_grad_j_reg_closed_form(normalize, full):
    y_hat, mask = rand_clusters(6, 4, seed=5, p_present=1.1 if full else 0.6)
    y_box = y_hat[:, 1, :4] * 0.9 + 0.05
    matched = torch.tensor([1, 1, 0, 1, 0, 1], dtype=torch.bool)
    rows = torch.rand(6, 4, dtype=D) + 0.2

    def loss(th, reduction='sum'):
        return j_reg(theta_fuse(y_hat, mask, th, normalize=normalize)[0], y_box, matched,
                     reduction=reduction)

    closed = grad_j_reg(y_hat[..., :4], rows, y_box, mask, matched, normalize=normalize)
    torch.testing.assert_close(_autograd(loss, rows), closed)  # per-cluster rows
    shared = torch.rand(4, dtype=D) + 0.2  # shared Θ, mean over matched clusters
    closed = grad_j_reg(y_hat[..., :4], shared, y_box, mask, matched, normalize).sum(0) / 4
    torch.testing.assert_close(_autograd(lambda t: loss(t, 'mean'), shared), closed)
    if full and not normalize:  # the literal seed §7.1 expression for one cluster
        yb = y_hat[0, :, :4]  # [N, 4]
        torch.testing.assert_close(grad_j_reg(y_hat[:1, :, :4], shared, y_box[:1])[0],
                                   yb @ (yb.T @ shared - y_box[0]))


def test_grad_j_cons_closed_form_not_seed():
    theta = torch.tensor([0.2, 0.7, 0.4], dtype=D)
    g = _autograd(j_cons, theta)
    torch.testing.assert_close(g, grad_j_cons(theta))
    torch.testing.assert_close(g, torch.full((3,), 0.3, dtype=D))  # (1ᵀΘ − 1)·1
    assert not torch.allclose(g, theta - 1)  # the seed's §7.2 is wrong
    rows = torch.rand(5, 3, dtype=D)
    torch.testing.assert_close(_autograd(lambda t: j_cons(t, 'sum'), rows), grad_j_cons(rows))
    torch.testing.assert_close(_autograd(j_cons, rows), grad_j_cons(rows) / 5)
    assert j_cons(torch.zeros(0, 3, dtype=D)) == 0


def test_grad_j_cls_closed_form():
    y_hat, mask = rand_clusters(6, 3, seed=6)
    p = y_hat[..., 4]
    y = torch.tensor([1., 0., 1., 0., .6, 1.], dtype=D)  # IoU-valued targets allowed
    rows = torch.rand(6, 3, dtype=D) * 0.8 + 0.1  # θp in (0, 1)
    closed = grad_j_cls(rows, p, mask, y)
    torch.testing.assert_close(_autograd(lambda t: j_cls(t, p, mask, y, reduction='sum'), rows),
                               closed)
    shared = torch.rand(3, dtype=D) * 0.8 + 0.1
    torch.testing.assert_close(_autograd(lambda t: j_cls(t, p, mask, y), shared),
                               grad_j_cls(shared, p, mask, y).sum(0) / 6)
    # seed §7.3 by hand: θ=.5, p=.6, y=1 → (.3 − 1)/(.5·.7) = −2; loss = −log .3
    one = dict(p=torch.tensor([[.6]], dtype=D), mask=torch.ones(1, 1, dtype=torch.bool),
               y=torch.ones(1, dtype=D))
    th = torch.tensor([.5], dtype=D)
    assert grad_j_cls(th, **one).item() == pytest.approx(-2.)
    assert j_cls(th, **one).item() == pytest.approx(-torch.log(torch.tensor(.3)).item())
    # clamp: θp ≥ 1 gives a finite loss and zero gradient (autograd and closed form agree)
    big = torch.tensor([2.], dtype=D)
    assert torch.isfinite(j_cls(big, **one))
    assert _autograd(lambda t: j_cls(t, **one), big).item() == 0 == grad_j_cls(big, **one).item()


@pytest.mark.parametrize('param', ['identity', 'softplus', 'sigmoid'])
def test_parameterisations(param):
    theta = torch.tensor([0.05, 0.3, 0.9], dtype=D)
    phi = phi_from_theta(theta, param)
    torch.testing.assert_close(theta_from_phi(phi, param), theta)
    g = _autograd(lambda t: theta_from_phi(t, param).sum(), phi)
    torch.testing.assert_close(g, dtheta_dphi(phi, param))
    wild = torch.linspace(-30, 30, 61, dtype=D)
    th = theta_from_phi(wild, param)
    if param != 'identity':
        assert (th >= 0).all() and torch.isfinite(th).all()
    if param == 'sigmoid':
        assert (th <= 1).all()
    with pytest.raises(ValueError, match='param'):
        theta_from_phi(phi, 'exp')


# ----------------------------------------------------------------------------- toy training
def toy_problem(c=256, seed=0, sigma=(0.01, 0.1)):
    """Member 0 is accurate, member 1 noisy; member 0's score separates pos/neg."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(c, 2, generator=g, dtype=D) * 0.5
    gt = torch.cat([xy, xy + torch.rand(c, 2, generator=g, dtype=D) * 0.4 + 0.1], 1)  # [C, 4]
    boxes = [gt + s * torch.randn(c, 4, generator=g, dtype=D) for s in sigma]
    y = (torch.rand(c, generator=g) < 0.5).to(D)
    p0 = torch.where(y > 0, 0.8, 0.1) + 0.05 * torch.rand(c, generator=g, dtype=D)
    p1 = torch.full((c,), 0.7, dtype=D)
    y_hat = torch.stack([torch.cat([boxes[0], p0[:, None]], 1),
                         torch.cat([boxes[1], p1[:, None]], 1)], 1)  # [C, 2, 5]
    return y_hat, torch.ones(c, 2, dtype=torch.bool), y, gt


@pytest.mark.parametrize('param,lr', [('identity', 0.5), ('softplus', 2.5)])
def test_toy_sgd_reg_cons(param, lr):
    y_hat, mask, y, gt = toy_problem()
    matched = torch.ones(len(y), dtype=torch.bool)  # box loss on every cluster
    phi = phi_from_theta(torch.full((2,), 0.5, dtype=D), param).requires_grad_()
    opt = torch.optim.SGD([phi], lr=lr)  # the seed's Θ ← Θ − α∇J for 'identity'
    for _ in range(800):
        opt.zero_grad()
        losses = fusion_loss(y_hat, mask, theta_from_phi(phi, param), y, gt, matched,
                             lambda_cls=0.)
        (losses['loss_reg'] + losses['loss_cons']).backward()
        opt.step()
    theta = theta_from_phi(phi.detach(), param)
    # optimum of Σθ_i²σ_i² s.t. ΣΘ = 1 is θ_0 = σ1²/(σ0² + σ1²) ≈ 0.99
    assert theta[0] > 0.85 and theta[1] < 0.15, theta  # softplus approaches 0 slowly
    assert abs(theta.sum().item() - 1) < 0.02, theta


@pytest.mark.parametrize('param', ['softplus', 'sigmoid'])
def test_toy_sgd_with_cls(param):
    y_hat, mask, y, gt = toy_problem(seed=1)
    matched = y > 0
    phi = phi_from_theta(torch.full((2,), 0.5, dtype=D), param).requires_grad_()
    opt = torch.optim.SGD([phi], lr=0.2)
    for _ in range(400):
        opt.zero_grad()
        loss = sum(fusion_loss(y_hat, mask, theta_from_phi(phi, param), y, gt, matched).values())
        loss.backward()
        opt.step()
    theta = theta_from_phi(phi.detach(), param)
    # J_cls pulls each θ_i toward its own calibration scale, so ΣΘ = 1 is not
    # reached; the accurate, score-informative member still gets the larger weight
    assert torch.isfinite(loss) and theta[0] > theta[1] + 0.2, theta


# ------------------------------------------------------------------ Θ on the WBF form
def _wbf_clusters(conf_type, weights=None, seed=1):
    """match_boxes (mmens' WBF, equal to ensemble-boxes: test_fusion_parity) of a seeded
    synthetic load, in float64."""
    from mmens.ops import PackedDetections, match_boxes
    from mmens.testing.synthetic import synthetic_batch
    packed, _ = synthetic_batch(4, 3, 30, num_classes=5, seed=seed)
    dets = PackedDetections(packed['bboxes'].double() / torch.tensor([640., 480, 640, 480]),
                            packed['scores'].double(), packed['labels'], packed['members'],
                            packed['images'], 3, 4)
    return match_boxes(dets, weights=weights, conf_type=conf_type)


@pytest.mark.parametrize('conf_type', WBF_CONF_TYPES)
def test_wbf_theta_fuse_uniform_theta_is_wbf(conf_type):
    cl = _wbf_clusters(conf_type)
    assert cl.counts.max() > 1 and (~cl.mask).any()  # several boxes, absent members
    for theta in (torch.full((3,), 1 / 3, dtype=D), torch.full((3,), 7.0, dtype=D),
                  torch.full((cl.mask.shape[0], 3), 0.2, dtype=D)):
        boxes, scores = wbf_theta_fuse(cl.y_hat, cl.mask, cl.counts, theta, conf_type)
        # ensemble-boxes keeps float32 sums: equal to that precision
        torch.testing.assert_close(boxes, cl.fused_boxes, rtol=0, atol=1e-6)
        torch.testing.assert_close(scores, cl.fused_scores, rtol=0, atol=1e-6)


@pytest.mark.parametrize('conf_type', WBF_CONF_TYPES)
def test_wbf_theta_fuse_theta_as_weights_is_weighted_wbf(conf_type):
    w = torch.tensor([2.0, 0.5, 1.25], dtype=D)
    cl = _wbf_clusters(conf_type, weights=w)
    boxes, scores = wbf_theta_fuse(cl.y_hat, cl.mask, cl.counts, w / w.sum(), conf_type)
    torch.testing.assert_close(boxes, cl.fused_boxes, rtol=0, atol=1e-6)
    torch.testing.assert_close(scores, cl.fused_scores, rtol=0, atol=1e-6)
    # any other Θ moves the output; per-cluster rows of a shared Θ give the same
    other = torch.tensor([0.2, 0.5, 0.3], dtype=D)
    b2, s2 = wbf_theta_fuse(cl.y_hat, cl.mask, cl.counts, other, conf_type)
    assert (s2 - cl.fused_scores).abs().max() > 1e-3
    b3, s3 = wbf_theta_fuse(cl.y_hat, cl.mask, cl.counts,
                            other.expand(len(s2), -1), conf_type)
    torch.testing.assert_close((b3, s3), (b2, s2))


def test_wbf_theta_fuse_errors_and_gradient():
    cl = _wbf_clusters('avg')
    with pytest.raises(ValueError, match="conf_type must be one of .* got 'max'"):
        wbf_theta_fuse(cl.y_hat, cl.mask, cl.counts, torch.ones(3, dtype=D), 'max')
    with pytest.raises(ValueError, match='counts must have shape'):
        wbf_theta_fuse(cl.y_hat, cl.mask, cl.counts[:, :2], torch.ones(3, dtype=D))
    theta = torch.tensor([0.3, 0.5, 0.2], dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t: torch.cat([o.reshape(-1) for o in wbf_theta_fuse(
            cl.y_hat[:20], cl.mask[:20], cl.counts[:20], t)]), (theta, ))
