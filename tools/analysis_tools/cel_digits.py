"""e2e-CEL on scikit-learn's digits: test accuracy per method per ensemble size k.

Example::

    python tools/analysis_tools/cel_digits.py --seed 0 --sizes 1 2 3 4 5 6 7 8 9 --out work_dirs/cel_digits.md

e2e-CEL in miniature (Kotary, Di Vito & Fioretto, IJCAI 2023, §6). scikit-learn is a test
and report requirement only (requirements/tests.txt), not a requirement of the installed package.

Setting:
- digits (1797 × 64 pixels, 10 classes) is split, seeded and stratified, into train/val/test.
- N specialised base learners (multinomial logistic regressions) are fitted on *train*. Learner i
  sees all train images of its ``classes_per_learner`` consecutive classes
  ``{(i·C/N + j) mod C}`` and only ``other_fraction`` of the others, so its errors are on the
  classes it rarely saw and the learners' errors are complementary.
- Everything learned on top of the learners (e2e-CEL's selection net, the Super Learner weights,
  the choice of best single learner) is fitted on *val*; all accuracies are on *test*.

Methods (test accuracy):
- ``e2e_cel``: selection net ``g_φ(pixels) → ĉ ∈ R^N`` (MLP), the perturbed top-k layer
  (:class:`~mmens.ops.knapsack.PerturbedSelector`), aggregation = masked sum of the selected
  learners' softmax outputs, then ``softmax`` (paper) or ``log`` of the normalised mixture,
  cross-entropy; only φ is trained (Adam). At test time the selection is the hard top-k.
- ``random_k``: the same aggregation over k learners drawn uniformly per image (control).
- ``averaging``: mean of all N learners' probabilities.
- ``voting``: plurality vote of the N learners' argmaxes; ties broken by the mean probability.
- ``super_learner``: global weights α = softmax(θ) ≥ 0 (on the simplex) maximising the val
  log-likelihood of ``Σ_i α_i p_i`` (a probability-level Super Learner).
- ``best_single``: the learner with the best val accuracy.
- ``val_mlp``: reference, not an ensemble: an MLP shaped like ``g_φ`` trained directly on the val
  labels (what the selection net could reach by classifying the digits itself).
"""
import argparse
import csv
import os
import os.path as osp
import time
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmens.ops.knapsack import PerturbedSelector, topk_mask

AGGREGATES = ('softmax', 'log')
SELECTIONS = ('perturbed', 'random')


@dataclass
class CelDigitsConfig:
    """All knobs of the digits experiment (defaults: this tool's run)."""
    seed: int = 0
    sizes: Sequence[int] = (1, 2, 3, 4, 5, 6, 7, 8, 9)
    num_learners: int = 10
    classes_per_learner: int = 2
    other_fraction: float = 0.01
    split: Tuple[float, float, float] = (0.5, 0.25, 0.25)
    hidden: int = 64
    epochs: int = 60
    batch_size: int = 32
    lr: float = 3e-3
    num_samples: int = 1000
    sigma: float = 0.1
    noise: str = 'normal'
    l2_normalize: bool = True
    aggregate: str = 'softmax'
    selection: str = 'perturbed'

    def check(self) -> None:
        """Raise ``ValueError`` on inconsistent settings."""
        n = self.num_learners
        if n < 2 or not 1 <= self.classes_per_learner <= 10:
            raise ValueError('need num_learners >= 2 and 1 <= classes_per_learner <= 10')
        if any(not 1 <= int(k) <= n for k in self.sizes):
            raise ValueError(f'sizes must be in [1, num_learners={n}], got {list(self.sizes)}')
        if len(self.split) != 3 or min(self.split) <= 0 or abs(sum(self.split) - 1) > 1e-6:
            raise ValueError(f'split must be 3 positive fractions summing to 1, got {self.split}')
        if not 0 <= self.other_fraction <= 1:
            raise ValueError(f'other_fraction must be in [0, 1], got {self.other_fraction}')
        if self.aggregate not in AGGREGATES or self.selection not in SELECTIONS:
            raise ValueError(f'aggregate in {AGGREGATES}, selection in {SELECTIONS}')


def split_digits(seed: int, split: Tuple[float, float, float]) -> Dict[str, Tensor]:
    """Seeded stratified split: ``x_*`` ``Tensor[n, 64]`` in [0, 1], ``y_*`` ``Tensor[n]`` long."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32) / 16.0
    x_tr, x_rest, y_tr, y_rest = train_test_split(
        x, y, train_size=split[0], random_state=seed, stratify=y)
    x_va, x_te, y_va, y_te = train_test_split(
        x_rest, y_rest, train_size=split[1] / (split[1] + split[2]), random_state=seed,
        stratify=y_rest)
    out = dict(x_train=x_tr, y_train=y_tr, x_val=x_va, y_val=y_va, x_test=x_te, y_test=y_te)
    return {k: torch.as_tensor(v) if k[0] == 'x' else torch.as_tensor(v).long()
            for k, v in out.items()}


def train_specialists(x: Tensor, y: Tensor, cfg: CelDigitsConfig) -> list:
    """Fit ``cfg.num_learners`` specialised logistic regressions on ``x: Tensor[n, 64]``."""
    from sklearn.linear_model import LogisticRegression
    rng = np.random.default_rng(cfg.seed)
    xs, ys, c = x.numpy(), y.numpy(), 10
    learners = []
    for i in range(cfg.num_learners):
        start = (i * c) // cfg.num_learners
        special = [(start + j) % c for j in range(cfg.classes_per_learner)]
        keep = np.isin(ys, special) | (rng.random(len(ys)) < cfg.other_fraction)
        learners.append(LogisticRegression(max_iter=500).fit(xs[keep], ys[keep]))
    return learners


def learner_probs(learners: list, x: Tensor, num_classes: int = 10) -> Tensor:
    """Softmax outputs of all learners: ``x: Tensor[n, 64]`` → ``Tensor[n, N, C]``."""
    out = torch.zeros(x.shape[0], len(learners), num_classes)  # [n, N, C]
    for i, lr in enumerate(learners):
        out[:, i, torch.as_tensor(lr.classes_)] = torch.as_tensor(
            lr.predict_proba(x.numpy()), dtype=torch.float32)  # unseen classes get 0
    return out


def aggregate(mask: Tensor, probs: Tensor, mode: str = 'softmax') -> Tensor:
    """Log-probabilities of the sub-ensemble.

    Args:
        mask: ``Tensor[B, N]`` selection (0/1, or soft).
        probs: ``Tensor[B, N, C]`` learners' softmax outputs.
        mode: ``'softmax'``: ``log_softmax(Σ_i x_i p_i)`` (paper); ``'log'``:
            ``log(Σ_i x_i p_i / Σ_i x_i)`` (the mixture's log-likelihood).

    Returns:
        ``Tensor[B, C]`` log-probabilities.
    """
    summed = (mask.unsqueeze(-1) * probs).sum(dim=1)  # [B, C]
    if mode == 'softmax':
        return F.log_softmax(summed, dim=-1)
    total = mask.sum(dim=1, keepdim=True).clamp(min=1e-6)  # [B, 1]
    return torch.log((summed / total).clamp(min=1e-6))  # [B, C]


def train_selection_net(x: Tensor, probs: Tensor, y: Tensor, k: int,
                        cfg: CelDigitsConfig) -> nn.Module:
    """Train ``g_φ`` on ``x: Tensor[n, 64]``, ``probs: Tensor[n, N, C]``, ``y: Tensor[n]``."""
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + k)
    torch.manual_seed(cfg.seed * 1000 + k)
    net = nn.Sequential(nn.Linear(x.shape[1], cfg.hidden), nn.ReLU(),
                        nn.Linear(cfg.hidden, probs.shape[1]))
    selector = PerturbedSelector(k=k, num_samples=cfg.num_samples, sigma=cfg.sigma,
                                 noise=cfg.noise, l2_normalize=cfg.l2_normalize)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    n = x.shape[0]
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)  # [n]
        for start in range(0, n, cfg.batch_size):
            idx = order[start:start + cfg.batch_size]  # [b]
            mask = selector(net(x[idx]), generator=gen)  # [b, N]
            loss = F.nll_loss(aggregate(mask, probs[idx], cfg.aggregate), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def train_val_mlp(x: Tensor, y: Tensor, cfg: CelDigitsConfig) -> nn.Module:
    """Reference classifier shaped like ``g_φ``: ``x: Tensor[n, 64]``, ``y: Tensor[n]``."""
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    net = nn.Sequential(nn.Linear(x.shape[1], cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, 10))
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    for _ in range(cfg.epochs):
        order = torch.randperm(x.shape[0], generator=gen)  # [n]
        for start in range(0, x.shape[0], cfg.batch_size):
            idx = order[start:start + cfg.batch_size]  # [b]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def fit_super_learner(probs: Tensor, y: Tensor, steps: int = 300) -> Tensor:
    """Non-negative global weights ``Tensor[N]`` (sum 1) maximising val log-likelihood."""
    theta = torch.zeros(probs.shape[1], requires_grad=True)  # [N]
    opt = torch.optim.Adam([theta], lr=0.05)
    for _ in range(steps):
        mix = (torch.softmax(theta, 0)[None, :, None] * probs).sum(1)  # [n, C]
        loss = F.nll_loss(torch.log(mix.clamp(min=1e-6)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.softmax(theta.detach(), 0)


def _acc(scores: Tensor, y: Tensor) -> float:
    return (scores.argmax(-1) == y).float().mean().item()


def run_cel_digits(cfg: CelDigitsConfig) -> List[Dict[str, float]]:
    """Run the experiment; one row per ensemble size k, accuracies in [0, 1]."""
    cfg.check()
    data = split_digits(cfg.seed, cfg.split)
    learners = train_specialists(data['x_train'], data['y_train'], cfg)
    p_val = learner_probs(learners, data['x_val'])  # [n_val, N, C]
    p_te = learner_probs(learners, data['x_test'])  # [n_te, N, C]
    y_val, y_te = data['y_val'], data['y_test']
    n_te, n = p_te.shape[:2]

    val_acc = (p_val.argmax(-1) == y_val[:, None]).float().mean(0)  # [N]
    votes = F.one_hot(p_te.argmax(-1), p_te.shape[-1]).sum(1).float()  # [n_te, C]
    alpha = fit_super_learner(p_val, y_val)  # [N]
    fixed = dict(
        averaging=_acc(p_te.mean(1), y_te),
        voting=_acc(votes + 1e-3 * p_te.mean(1), y_te),
        super_learner=_acc((alpha[None, :, None] * p_te).sum(1), y_te),
        best_single=_acc(p_te[:, int(val_acc.argmax())], y_te))
    mlp = train_val_mlp(data['x_val'], y_val, cfg)
    with torch.no_grad():
        fixed['val_mlp'] = _acc(mlp(data['x_test']), y_te)
    gen = torch.Generator().manual_seed(cfg.seed)
    rows = []
    for k in cfg.sizes:
        t0 = time.time()
        rand_mask = topk_mask(torch.rand(n_te, n, generator=gen), k)  # [n_te, N]
        if cfg.selection == 'perturbed':
            net = train_selection_net(data['x_val'], p_val, y_val, k, cfg)
            with torch.no_grad():
                mask = topk_mask(net(data['x_test']), k)  # [n_te, N]
        else:  # control: a random selection instead of the learned one
            mask = topk_mask(torch.rand(n_te, n, generator=gen), k)  # [n_te, N]
        rows.append(dict(k=int(k), e2e_cel=_acc(aggregate(mask, p_te, cfg.aggregate), y_te),
                         random_k=_acc(aggregate(rand_mask, p_te, cfg.aggregate), y_te),
                         **fixed, seconds=time.time() - t0))
    return rows


def format_table(rows: List[Dict[str, float]], digits: int = 3) -> str:
    """Markdown table of :func:`run_cel_digits` rows (accuracies as fractions)."""
    keys = list(rows[0].keys())
    lines = ['| ' + ' | '.join(keys) + ' |', '|' + '---|' * len(keys)]
    for r in rows:
        cells = [str(r[c]) if isinstance(r[c], int) else f'{r[c]:.{digits}f}' for c in keys]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    d = CelDigitsConfig()
    p = argparse.ArgumentParser(description='e2e-CEL vs ensemble baselines on sklearn digits')
    p.add_argument('--seed', type=int, default=d.seed)
    p.add_argument('--sizes', type=int, nargs='+', default=list(d.sizes),
                   help='ensemble sizes k (1 <= k <= num-learners)')
    p.add_argument('--num-learners', type=int, default=d.num_learners)
    p.add_argument('--classes-per-learner', type=int, default=d.classes_per_learner)
    p.add_argument('--other-fraction', type=float, default=d.other_fraction,
                   help='fraction of non-specialty train images each learner sees')
    p.add_argument('--epochs', type=int, default=d.epochs)
    p.add_argument('--lr', type=float, default=d.lr)
    p.add_argument('--num-samples', type=int, default=d.num_samples, help='M perturbations')
    p.add_argument('--sigma', type=float, default=d.sigma)
    p.add_argument('--noise', choices=['normal', 'gumbel'], default=d.noise)
    p.add_argument('--no-l2-normalize', action='store_true')
    p.add_argument('--aggregate', choices=['softmax', 'log'], default=d.aggregate)
    p.add_argument('--selection', choices=['perturbed', 'random'], default=d.selection,
                   help="'random' replaces the learned selection (a control)")
    p.add_argument('--threads', type=int, default=1, help='torch CPU threads')
    p.add_argument('--out', default=None, help='write the table to this .csv or .md file')
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> List[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = CelDigitsConfig(
        seed=args.seed, sizes=tuple(args.sizes), num_learners=args.num_learners,
        classes_per_learner=args.classes_per_learner, other_fraction=args.other_fraction,
        epochs=args.epochs, lr=args.lr, num_samples=args.num_samples, sigma=args.sigma,
        noise=args.noise, l2_normalize=not args.no_l2_normalize, aggregate=args.aggregate,
        selection=args.selection)
    t0 = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # sklearn convergence chatter on tiny subsets
        rows = run_cel_digits(cfg)
    table = format_table(rows)
    print(f'# e2e-CEL on digits: test accuracy (seed {cfg.seed}, {cfg.num_learners} learners, '
          f'{cfg.classes_per_learner} classes each, other_fraction {cfg.other_fraction}, '
          f'{time.time() - t0:.1f}s)')
    print(table)
    if args.out:
        if osp.dirname(args.out):
            os.makedirs(osp.dirname(args.out), exist_ok=True)
        with open(args.out, 'w', newline='', encoding='utf-8') as f:
            if args.out.endswith('.csv'):
                writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
                writer.writeheader()
                writer.writerows([{c: round(v, 4) for c, v in r.items()} for r in rows])
            else:
                f.write(table + '\n')
    return rows


if __name__ == '__main__':
    main()
