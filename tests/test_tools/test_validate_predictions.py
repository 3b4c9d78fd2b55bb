"""tools/analysis_tools/validate_predictions.py: clear errors, counted repairs, repaired files that validate."""
import json
import os.path as osp
import subprocess
import sys

from conftest import DATA, ROOT

ANN = osp.join(DATA, 'annotations', 'val.json')
GOOD = osp.join(DATA, 'predictions', 'val', 'nanodet-416.json')


def run(*args):
    return subprocess.run([sys.executable, 'tools/analysis_tools/validate_predictions.py', '--ann', ANN,
                           *args], cwd=ROOT, capture_output=True, text=True)


def test_good_bad_and_repaired_files(tmp_path):
    ok = run('--preds', GOOD)
    assert ok.returncode == 0 and 'valid' in ok.stdout
    entries = json.load(open(GOOD))
    entries[3]['score'] = 1.7
    entries[9]['bbox'][3] = float('nan')
    bad = tmp_path / 'bad.json'
    bad.write_text(json.dumps(entries))
    fail = run('--preds', str(bad))
    assert fail.returncode == 2 and 'Traceback' not in fail.stderr
    assert "member 'bad'" in fail.stderr and 'entry 9' in fail.stderr and "'bbox'" in fail.stderr
    fixed = run('--preds', str(bad), '--repair', '--out-dir', str(tmp_path / 'out'))
    assert fixed.returncode == 0, fixed.stderr
    assert "'dropped_nonfinite_bbox': 1" in fixed.stdout and "'clipped_score': 1" in fixed.stdout
    again = run('--preds', str(tmp_path / 'out' / 'bad.json'))
    assert again.returncode == 0 and f'{len(entries) - 1} boxes' in again.stdout
    trunc = tmp_path / 'trunc.json'
    trunc.write_text(json.dumps(entries)[:500])
    t = run('--preds', str(trunc))
    assert t.returncode == 2 and 'not valid JSON' in t.stderr
