"""A checkpoint that would run code is refused with one line naming the file and the global.

Every place mmens loads a checkpoint goes through ``torch.load(weights_only=True)`` with
mmens' allow-list (mmens.utils.setup_env): mmengine's ``CheckpointLoader`` (tools/test.py,
tools/train.py --resume, ``load_from``) and ``load_ensemble_checkpoint`` (fuse_results.py).
"""
import glob
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

from conftest import DATA, ROOT

WBF = osp.join(ROOT, 'configs', 'wbf', 'wbf_6members_coco-real-val.py')


class _Pwn:
    """Unpickling it calls ``os.system`` (what a malicious checkpoint does)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


class _NotAllowed:  # a plain class: not on the allow-list either
    pass


def evil_checkpoint(tmp_path):
    marker = tmp_path / 'pwned'
    path = str(tmp_path / 'evil.pth')
    torch.save({'meta': {}, 'state_dict': {}, 'payload': _Pwn(str(marker))}, path)
    return path, marker


def expected(path, name='posix.system'):
    return (f"{path}: refused to load: it needs the global '{name}', which is not on "
            "mmens' allow-list (a checkpoint must never run code)")


def test_refused_in_process_with_one_line(tmp_path):
    from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint

    from mmens.apis import load_ensemble_checkpoint
    from mmens.utils import CorruptCheckpointError, UnsafeCheckpointError, safe_torch_load
    path, marker = evil_checkpoint(tmp_path)
    loaders = [lambda: safe_torch_load(path),
               lambda: CheckpointLoader.load_checkpoint(path, map_location='cpu'),
               lambda: _load_checkpoint(path, map_location='cpu'),  # Runner.load_checkpoint
               lambda: load_ensemble_checkpoint(path)]
    for load in loaders:
        with pytest.raises(UnsafeCheckpointError) as info:
            load()
        assert str(info.value) == expected(path)
        assert isinstance(info.value, ValueError)
    assert not marker.exists()
    # a class that is not allow-listed is named the same way
    other = str(tmp_path / 'class.pth')
    torch.save({'state_dict': {}, 'x': _NotAllowed()}, other)
    with pytest.raises(UnsafeCheckpointError) as info:
        safe_torch_load(other)
    assert str(info.value) == expected(other, f'{__name__}._NotAllowed')
    # a truncated file and a missing one: one line too
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(open(other, 'rb').read()[:200])
    with pytest.raises(CorruptCheckpointError, match='truncated or corrupt') as info:
        CheckpointLoader.load_checkpoint(str(truncated), map_location='cpu')
    assert '\n' not in str(info.value) and str(truncated) in str(info.value)
    with pytest.raises(ValueError, match='does not exist'):
        CheckpointLoader.load_checkpoint(str(tmp_path / 'nope.pth'), map_location='cpu')


def test_a_real_checkpoint_still_loads(tmp_path):
    """The allow-list keeps mmengine checkpoints (MessageHub, numpy) loadable."""
    from mmengine.logging import MessageHub
    from mmengine.runner.checkpoint import CheckpointLoader
    hub = MessageHub.get_instance('ckpt-safety')
    hub.update_scalar('train/loss', 0.5)
    path = str(tmp_path / 'ok.pth')
    torch.save({'meta': {'epoch': 1}, 'state_dict': {'w': torch.ones(2)},
                'message_hub': hub.state_dict()}, path)
    ckpt = CheckpointLoader.load_checkpoint(path, map_location='cpu')
    assert torch.equal(ckpt['state_dict']['w'], torch.ones(2))


def cli(args):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize('tool', ['fuse_results', 'test'])
def test_cli_refuses_with_one_line(tmp_path, tool):
    path, marker = evil_checkpoint(tmp_path)
    if tool == 'fuse_results':
        preds = sorted(glob.glob(osp.join(DATA, 'predictions', 'val', '*.json')))
        proc = cli(['tools/analysis_tools/fuse_results.py', '--ann',
                    osp.join(DATA, 'annotations', 'val.json'), '--preds', *preds,
                    '--method', 'learned', '--checkpoint', path])
    else:
        proc = cli(['tools/test.py', WBF, path, '--work-dir', str(tmp_path / 'work')])
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr + proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == [f'error: {expected(path)}'], proc.stderr[-3000:]
    assert not marker.exists()
