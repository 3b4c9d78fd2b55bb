"""Plots written to the work dir (matplotlib, Agg backend)."""
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_ap_bars(rows: List[Dict], path: str, reference: Optional[str] = None) -> str:
    """Horizontal bars of COCO AP per method, with the bootstrap interval of the
    difference to ``reference`` drawn around each bar when present."""
    names = [r['method'] for r in rows]
    ap = np.array([100 * r['AP'] for r in rows])
    fig, ax = plt.subplots(figsize=(8, 0.38 * len(rows) + 1.2))
    colors = ['#4c72b0' if r.get('kind') == 'member' else
              '#dd8452' if r.get('kind') == 'fixed' else '#55a868' for r in rows]
    y = np.arange(len(rows))[::-1]
    ax.barh(y, ap, color=colors)
    ref_ap = next((100 * r['AP'] for r in rows if r['method'] == reference), None)
    right = ap.max()
    for yi, r, a in zip(y, rows, ap):
        end = a
        if ref_ap is not None and r.get('ci') is not None and r['method'] != reference:
            lo, hi = ref_ap + 100 * r['ci'][0], ref_ap + 100 * r['ci'][1]
            ax.plot([lo, hi], [yi, yi], color='black', lw=1.5)
            end = max(a, hi)
        right = max(right, end)
        ax.text(end + 0.4, yi, f'{a:.1f}', va='center', fontsize=8)
    if ref_ap is not None:
        ax.axvline(ref_ap, color='gray', ls='--', lw=1)
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlabel('COCO AP, % (out of fold on val)')
    if ref_ap is not None:
        ax.set_title(f'black: 95% paired-bootstrap interval of the difference to\n'
                     f'"{reference}" (dashed), placed around its AP', fontsize=8)
    ax.set_xlim(0, right * 1.12)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_theta(theta: np.ndarray, members: Sequence[str], path: str,
               classes: Optional[Sequence[str]] = None, title: str = 'Θ') -> str:
    """Θ as bars (``[N]``) or as a members × classes heatmap (``[K, N]``)."""
    theta = np.asarray(theta)
    if theta.ndim == 1:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.bar(range(len(members)), theta, color='#55a868')
        ax.set_xticks(range(len(members)), members, rotation=30, ha='right', fontsize=8)
        ax.set_ylabel('θ')
        ax.set_title(f'{title} (Σθ = {theta.sum():.3f})')
    else:
        fig, ax = plt.subplots(figsize=(16, 3.2))
        im = ax.imshow(theta.T, aspect='auto', cmap='viridis')
        ax.set_yticks(range(len(members)), members, fontsize=8)
        if classes is not None:
            ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=6)
        fig.colorbar(im, ax=ax, fraction=0.02)
        ax.set_title(f'{title}: members × classes (mean Σθ per class = '
                     f'{theta.sum(1).mean():.3f})')
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_budget_curve(curves: Dict[str, List[tuple]], path: str,
                      xlabel: str = 'member compute per image (s)') -> str:
    """AP against budget: ``curves[name] = [(cost, AP), ...]``."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in curves.items():
        pts = sorted(pts)
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker='o', label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel('COCO AP (out-of-fold, %)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_selection_frequency(freq: Dict[str, Sequence[float]], members: Sequence[str],
                             path: str) -> str:
    """How often each member is selected, one group of bars per budget."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / max(1, len(freq))
    for i, (name, f) in enumerate(freq.items()):
        ax.bar(np.arange(len(members)) + i * width, f, width, label=name)
    ax.set_xticks(np.arange(len(members)) + 0.4 - width / 2, members, rotation=30,
                  ha='right', fontsize=8)
    ax.set_ylabel('share of images selected')
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_pr_curves(curves: Dict[str, tuple], path: str, title: str = '') -> str:
    """Precision against recall, one line per result set: ``curves[name] = (recall [R],
    precision [R])`` (COCO's 101 recall points; precision in ``[0, 1]``)."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, (recall, precision) in curves.items():
        ax.plot(recall, precision, label=name, lw=2.2 if name == 'ensemble' else 1.2,
                color='black' if name == 'ensemble' else None)
    ax.set_xlabel('recall')
    ax.set_ylabel('precision')
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
