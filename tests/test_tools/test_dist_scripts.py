"""tools/dist_train.sh and tools/dist_test.sh work in a fresh shell (venv not activated):
$PYTHON if set, else the repository's .venv/bin/python, else python from PATH."""
import os
import os.path as osp
import subprocess

import pytest

from conftest import ROOT



def fake_python(tmp_path):
    """A `python` first on PATH that fails and leaves a marker (no torch there)."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    marker = tmp_path / 'path-python-ran'
    script = bin_dir / 'python'
    script.write_text(f'#!/bin/sh\ntouch {marker}\necho "No module named torch" >&2\n'
                      'exit 1\n')
    script.chmod(0o755)
    return str(bin_dir), marker


@pytest.mark.parametrize('script,args,port', [
    ('tools/dist_test.sh', ['CONFIG.py', 'none', '1'], '29531'),
    ('tools/dist_train.sh', ['CONFIG.py', '1'], '29532')])
def test_dist_scripts_pick_the_interpreter(tmp_path, script, args, port):
    bin_dir, marker = fake_python(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHON', 'VIRTUAL_ENV')}
    env['PATH'] = bin_dir + os.pathsep + '/usr/bin:/bin'
    env['PORT'] = port
    run = lambda e: subprocess.run(['bash', script, *args, '--help'], cwd=ROOT, env=e,  # noqa
                                   capture_output=True, text=True, timeout=300)
    # (no $PYTHON: the venv's python, not the one on PATH; test_dist_test_matches_single_
    # process runs dist_test.sh so, end to end)
    # $PYTHON wins over both
    proc = run(dict(env, PYTHON=osp.join(bin_dir, 'python')))
    assert proc.returncode != 0 and marker.exists()
