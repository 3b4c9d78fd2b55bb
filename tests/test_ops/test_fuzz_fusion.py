"""The seeded fuzz test of the fusion ops (tests/test_ops/fuzz_fusion.py),
run in a subprocess so that a crash of the process fails the test."""
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CASES = 2100


def test_fuzz_every_entry_point_on_both_backends():
    env = dict(os.environ)
    # the checkout after any PYTHONPATH given (make sanitize puts its build
    # of the kernel first)
    env['PYTHONPATH'] = os.pathsep.join(
        ([env['PYTHONPATH']] if env.get('PYTHONPATH') else []) + [str(ROOT)])
    res = subprocess.run([
        sys.executable,
        str(HERE / 'fuzz_fusion.py'), '--cases',
        str(CASES), '--seed', '0'
    ], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode in (0, 1), (res.returncode, res.stderr[-3000:])
    stats = json.loads(res.stdout.strip().splitlines()[-1])
    assert stats['failures'] == [], stats['failures'][:20]
    assert res.returncode == 0
    assert stats['cases'] == CASES
    # every entry point, with valid and invalid input in fair shares
    assert len(stats['entries']) == 13, stats['entries']
    assert min(stats['entries'].values()) >= CASES // 26
    assert min(stats['valid'], stats['invalid']) >= CASES // 4
    sys.path.insert(0, str(HERE))
    try:
        from fuzz_fusion import MUTATIONS
    finally:
        sys.path.remove(str(HERE))
    missing = {m[0] for m in MUTATIONS} - set(stats['mistakes'])
    assert not missing, missing  # every kind of mistake was tried
