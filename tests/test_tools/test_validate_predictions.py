"""tools/analysis_tools/validate_predictions.py: clear errors, counted repairs, repaired files
that validate."""
import json
import os.path as osp
import subprocess
import sys

import pytest

from conftest import DATA, ROOT, load_tool

ANN = osp.join(DATA, 'annotations', 'val.json')
GOOD = osp.join(DATA, 'predictions', 'val', 'nanodet-416.json')


def test_good_bad_and_repaired_files(tmp_path, capsys):
    main = load_tool('validate_predictions').main  # in process; the CLI once, below
    main(['--ann', ANN, '--preds', GOOD])
    assert 'valid' in capsys.readouterr().out
    entries = json.load(open(GOOD))
    entries[3]['score'] = 1.7
    entries[9]['bbox'][3] = float('nan')
    bad = tmp_path / 'bad.json'
    bad.write_text(json.dumps(entries))
    # through the CLI: exit 2, one line naming the member, entry and field, no traceback
    fail = subprocess.run([sys.executable, 'tools/analysis_tools/validate_predictions.py',
                           '--ann', ANN, '--preds', str(bad)], cwd=ROOT, capture_output=True,
                          text=True)
    assert fail.returncode == 2 and 'Traceback' not in fail.stderr
    assert len(fail.stderr.strip().splitlines()) == 1
    assert "member 'bad'" in fail.stderr and 'entry 9' in fail.stderr and "'bbox'" in fail.stderr
    main(['--ann', ANN, '--preds', str(bad), '--repair', '--out-dir', str(tmp_path / 'out')])
    out = capsys.readouterr().out
    assert "'dropped_nonfinite_bbox': 1" in out and "'clipped_score': 1" in out
    main(['--ann', ANN, '--preds', str(tmp_path / 'out' / 'bad.json')])
    assert f'{len(entries) - 1} boxes' in capsys.readouterr().out
    trunc = tmp_path / 'trunc.json'
    trunc.write_text(json.dumps(entries)[:500])
    with pytest.raises(ValueError, match='not valid JSON'):
        main(['--ann', ANN, '--preds', str(trunc)])
