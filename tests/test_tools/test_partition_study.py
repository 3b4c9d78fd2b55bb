"""tools/analysis_tools/partition_study.py: choices on training images only, the table."""
import types

import numpy as np
import pytest
from conftest import load_tool

study = load_tool('partition_study')


class FakeEval:
    """AP = the mean of a per-image score over the positions asked for."""

    def __init__(self, per_image):
        self.per_image = np.asarray(per_image, dtype=float)

    def ap(self, positions):
        return float(self.per_image[np.asarray(positions)].mean())


def test_each_fold_chooses_on_its_training_images_only():
    batch = types.SimpleNamespace(img_ids=[10, 11, 12, 13])
    # candidate 0 is best on images 0-1, candidate 1 on images 2-3
    evals = [([{'image_id': i, 'c': 0} for i in batch.img_ids], FakeEval([1, 1, 0, 0])),
             ([{'image_id': i, 'c': 1} for i in batch.img_ids], FakeEval([0, 0, 1, 1]))]
    folds = [(np.array([0, 1]), np.array([2, 3])), (np.array([2, 3]), np.array([0, 1]))]
    out = study._choice_results(batch, evals, folds)
    # the held-out images get the candidate chosen on the other images (not their own best)
    assert sorted((r['image_id'], r['c']) for r in out) == [(10, 1), (11, 1), (12, 0),
                                                            (13, 0)]


def test_table_gives_mean_sd_min_and_the_interval():
    rows = [dict(method='ref', ap=[0.30, 0.32], delta=[0.0, 0.0], ci=None, fit_s=1.0),
            dict(method='x', ap=[0.31, 0.35], delta=[0.01, 0.03], fit_s=2.0,
                 ci=dict(diff=0.01, lo=-0.005, hi=0.02))]
    lines = study.table(rows).splitlines()
    assert lines[2] == '| ref | 31.0 ± 1.4 |  |  |  | 1.0 |'
    assert lines[3] == '| x | 33.0 ± 2.8 | +2.0 ± 1.4 | +1.0 | +1.0 [-0.5, +2.0] | 2.0 |'


def test_unknown_row_is_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"--rows: unknown row\(s\) \['nope'\]"):
        study.main(['--work-dir', str(tmp_path), '--rows', 'nope'])
