"""tools/analysis_tools/validate_predictions.py: clear errors, counted repairs, repaired files
that validate."""
import json
import re
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


def test_mistakes_are_refused_before_any_file_is_read(tmp_path):
    main = load_tool('validate_predictions').main
    corrupt = tmp_path / 'ann.json'
    corrupt.write_text('{"images": [')  # never read: each mistake comes first
    repair = ['--ann', str(corrupt), '--preds', GOOD, '--repair']
    cases = [
        (['--ann', str(corrupt), '--preds', str(tmp_path)],
         f'--preds {tmp_path} is a directory, not a COCO-results JSON file'),
        (['--ann', str(tmp_path), '--preds', GOOD],
         f'--ann {tmp_path} is a directory, not a COCO annotation file'),
        (['--ann', str(corrupt), '--preds', GOOD, '--out-dir', str(tmp_path)],
         '--out-dir writes repaired files: use it with --repair'),
        (repair + ['--out-dir', '/etc/hostname/out'],
         '--out-dir /etc/hostname/out: /etc/hostname is not a directory'),
        (repair + ['--out-dir', osp.dirname(GOOD)],
         f'--out-dir {osp.dirname(GOOD)} holds the files to repair'),
        (['--ann', str(corrupt), '--preds', GOOD,
          osp.join(DATA, 'predictions', 'train', 'nanodet-416.json'), '--repair', '--out-dir',
          str(tmp_path / 'out')], "would get several files named ['nanodet-416.json']"),
    ]
    for args, msg in cases:
        with pytest.raises(ValueError, match=re.escape(msg)):
            main(args)
    assert not (tmp_path / 'out').exists()


def test_masks_after_a_first_entry_without_are_not_lost(tmp_path):
    """A file whose first entry has no ``segmentation`` but a later one has: read as a
    mask file and refused at the first entry without, not validated as boxes only (and
    with --repair, not rewritten without its masks)."""
    main = load_tool('validate_predictions').main
    entries = json.load(open(GOOD))[:5]
    h, w = 10, 10
    entries[2]['segmentation'] = {'size': [h, w], 'counts': [0, h * w]}
    mixed = tmp_path / 'mixed.json'
    mixed.write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=r"member 'mixed'.*entry 0"):
        main(['--ann', ANN, '--preds', str(mixed)])
    with pytest.raises(ValueError, match='carries masks'):
        main(['--ann', ANN, '--preds', str(mixed), '--repair', '--out-dir', str(tmp_path / 'o')])
