"""tools/analysis_tools/cel_loss_vs_ap.py: its rank correlation and a small run of its table."""
import numpy as np
from conftest import load_tool


def _tool():
    return load_tool('cel_loss_vs_ap')


def test_spearman_with_ties():
    tool = _tool()
    a = np.array([1.0, 2.0, 2.0, 5.0])
    assert tool.spearman(a, a ** 3) == 1.0
    assert np.isclose(tool.spearman(a, -a), -1.0)
    # ranks [0, 1.5, 1.5, 3] against [0, 1, 2, 3]: Pearson of the ranks
    r = np.corrcoef([0, 1.5, 1.5, 3], [0, 1, 2, 3])[0, 1]
    assert np.isclose(tool.spearman(a, np.arange(4.0)), r)


def test_small_run_prints_one_row_per_loss(capsys):
    tool = _tool()
    tool.main(['--max-images', '6'])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith('| ') and 'loss_cls' not in line]
    assert [r.split(' | ')[0][2:] for r in rows] == list(tool.VARIANTS)
    for r in rows:
        cells = r.strip('| ').split(' | ')
        assert len(cells) == 3 + 5  # name, two correlations, k = 1..5
        assert all(-1.0 <= float(c) <= 1.0 for c in cells[1:3])
    # each variant starts from the config's own settings: without the box term, the
    # training loss is loss_cls alone
    no_box = [r.strip('| ').split(' | ') for r in rows if 'no box term' in r][0]
    assert no_box[1] == no_box[2]
