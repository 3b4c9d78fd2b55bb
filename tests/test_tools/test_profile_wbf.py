"""tools/analysis_tools/profile_wbf.py: its counters are right and its spatial split is conservative."""
import os.path as osp
import subprocess
import sys

import torch

import mmens.ops as mo
from conftest import load_tool

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = osp.join(ROOT, 'tools', 'analysis_tools', 'profile_wbf.py')


def _tool():
    return load_tool('profile_wbf')


def test_segment_cummax_before():
    tool = _tool()
    values = torch.tensor([0, 1, 0, 2, 0, 0, 1, 3, 1])
    group = torch.tensor([0, 0, 0, 0, 1, 2, 2, 2, 2])
    expected = [0, 1, 2, 2, 0, 0, 1, 2, 4]  # clusters open before each box
    assert tool.segment_cummax_before(values, group).tolist() == expected


def test_split_groups_never_separates_a_wbf_cluster():
    tool = _tool()
    g = torch.Generator().manual_seed(0)
    for thr in (0.0, 0.3, 0.55, 0.8):
        m = 1500
        ctr = torch.rand(m, 2, generator=g, dtype=torch.float64)
        wh = 0.01 + 0.1 * torch.rand(m, 2, generator=g, dtype=torch.float64)
        boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], 1).clamp(0, 1)
        scores = torch.rand(m, generator=g, dtype=torch.float64)
        labels = torch.randint(0, 3, (m,), generator=g)
        members = torch.randint(0, 4, (m,), generator=g)
        images = torch.randint(0, 5, (m,), generator=g)
        cl = mo.match_boxes(mo.PackedDetections(boxes, scores, labels, members, images, 4, 5),
                            iou_thr=thr)
        sub = tool.split_groups(boxes, images * 3 + labels, thr)  # [M]
        ok = cl.box_cluster >= 0
        c, s = cl.box_cluster[ok], sub[ok]
        # every cluster's boxes lie in one sub-group
        first = torch.full((int(c.max()) + 1,), -1, dtype=torch.long)
        first.scatter_reduce_(0, c, s, 'amax', include_self=False)
        last = torch.full_like(first, -1).scatter_reduce_(0, c, s, 'amin', include_self=False)
        assert torch.equal(first, last), thr
        assert int(torch.unique(sub).numel()) > 15  # it does split (15 = image x label)


def test_profile_tool_runs():
    out = subprocess.run([sys.executable, TOOL, '--images', '4', '--boxes', '20'],
                         capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert 'greedy loop' in out and 'exact greedy needs' in out


def test_profile_tool_rejects_bad_arguments(capsys):
    import pytest
    proc = subprocess.run([sys.executable, TOOL, '--images', '0'], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 2 and '--images must be >= 1' in proc.stderr
    assert 'Traceback' not in proc.stderr
    with pytest.raises(SystemExit, match='2'):  # argparse's error: usage and one line
        _tool().main(['--iou-thr', '-0.1'])
    assert '--iou-thr must be in [0, 1)' in capsys.readouterr().err
