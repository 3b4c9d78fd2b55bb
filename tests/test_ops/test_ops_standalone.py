"""mmens.ops imports and runs with torch and numpy alone (no mmcv/mmdet/mmengine).

The check runs in a fresh interpreter whose import system refuses the
OpenMMLab packages, the way it would if they were not installed.
"""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent('''
    import importlib.abc
    import sys

    BLOCKED = ('mmcv', 'mmdet', 'mmengine')


    class Absent(importlib.abc.MetaPathFinder):
        """Import finder for which the OpenMMLab packages are not installed."""

        def find_spec(self, name, path=None, target=None):
            if name.partition('.')[0] in BLOCKED:
                raise ModuleNotFoundError(f'No module named {name!r}', name=name)
            return None


    sys.meta_path.insert(0, Absent())

    import numpy as np
    import torch

    import mmens
    from mmens.ops import (PackedDetections, nms, non_maximum_weighted,
                           soft_nms, weighted_boxes_fusion,
                           weighted_boxes_fusion_batch,
                           weighted_boxes_fusion_packed)

    # two members that predict the same two boxes (values exact in float32)
    box = np.array([[0.125, 0.25, 0.5, 0.75], [0.5, 0.5, 0.875, 1.0]])
    score = np.array([0.75, 0.5])
    label = np.array([0, 1])
    two = ([box, box], [score, score], [label, label])

    b, s, l = weighted_boxes_fusion(*two)
    assert np.array_equal(b, box) and np.array_equal(s, score), (b, s)
    assert np.array_equal(l, label) and b.dtype == np.float64

    b, s, l = nms(*two)
    assert np.array_equal(b, box) and np.array_equal(s, score), (b, s)
    assert np.array_equal(l, label)

    b, s, l = soft_nms(*two, sigma=0.5, return_decayed_scores=True)
    # per label: the first copy keeps its score, the second (IoU 1) decays
    assert np.array_equal(b, box[[0, 0, 1, 1]]), b
    np.testing.assert_allclose(
        s, [0.75, 0.75 * np.exp(-2), 0.5, 0.5 * np.exp(-2)], rtol=1e-12)
    assert np.array_equal(l, [0, 0, 1, 1])

    b, s, l = non_maximum_weighted(*two)
    assert np.array_equal(b, box) and np.array_equal(s, score), (b, s)
    assert np.array_equal(l, label) and b.dtype == np.float32

    # two images in one call: the second with a single member's boxes moved
    other = ([box[:1] / 2, box[:1] / 2], [score[:1]] * 2, [label[:1]] * 2)
    (b0, s0, l0), (b1, s1, l1) = weighted_boxes_fusion_batch([two, other])
    assert np.array_equal(b0, box) and np.array_equal(s0, score)
    assert np.array_equal(b1, box[:1] / 2) and np.array_equal(s1, score[:1])

    t = torch.from_numpy
    dets = PackedDetections(t(np.concatenate([box, box])),
                            t(np.concatenate([score, score])),
                            t(np.concatenate([label, label])),
                            torch.tensor([0, 0, 1, 1]), None, 2)
    b, s, l, i = weighted_boxes_fusion_packed(dets, weights=torch.ones(2))
    assert torch.equal(b, t(box)) and torch.equal(s, t(score))
    assert torch.equal(l, t(label)) and torch.equal(i, torch.zeros(2).long())

    loaded = sorted(m for m in sys.modules if m.partition('.')[0] in BLOCKED)
    assert not loaded, loaded
    print('standalone ok')
''')


def _run(script: str) -> subprocess.CompletedProcess:
    """Run ``script`` in a fresh interpreter that imports this checkout."""
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        [str(ROOT)] + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else []))
    return subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_ops_run_without_openmmlab():
    res = _run(SCRIPT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert 'standalone ok' in res.stdout
