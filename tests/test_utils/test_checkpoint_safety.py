"""A checkpoint that would run code is refused with one line naming the file and the global.

Every place mmens loads a checkpoint goes through ``torch.load(weights_only=True)`` with
mmens' allow-list (``mmens.utils.safe_torch_load``): its Runner (``EnsembleRunner``:
tools/test.py, tools/train.py --resume, ``load_from``) and ``load_ensemble_checkpoint``
(fuse_results.py). Nothing of mmengine is patched: its ``CheckpointLoader`` and
``HistoryBuffer`` stay as they are for every other caller.
"""
import glob
import os
import os.path as osp
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import DATA, ROOT, run_tool

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
    from mmens.apis import load_ensemble_checkpoint
    from mmens.utils import CorruptCheckpointError, UnsafeCheckpointError, safe_torch_load
    path, marker = evil_checkpoint(tmp_path)
    for load in [lambda: safe_torch_load(path), lambda: load_ensemble_checkpoint(path)]:
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
        safe_torch_load(str(truncated))
    assert '\n' not in str(info.value) and str(truncated) in str(info.value)
    with pytest.raises(ValueError, match='does not exist'):
        safe_torch_load(str(tmp_path / 'nope.pth'))


def test_message_hub_saved_as_data_loads_weights_only(tmp_path):
    """What EnsembleRunner saves (data_only_message_hub) loads with the allow-list, and
    the loaded MessageHub still computes its statistics."""
    from mmengine.logging import MessageHub

    from mmens.utils import data_only_message_hub, safe_torch_load
    hub = MessageHub.get_instance('ckpt-safety')
    hub.update_scalar('train/loss', 0.5)
    hub.update_scalar('train/loss', 1.5)
    path = str(tmp_path / 'ok.pth')
    torch.save({'meta': {'epoch': 1}, 'state_dict': {'w': torch.ones(2)},
                'message_hub': data_only_message_hub(hub.state_dict())}, path)
    ckpt = safe_torch_load(path, map_location='cpu')
    assert torch.equal(ckpt['state_dict']['w'], torch.ones(2))
    loaded = MessageHub.get_instance('ckpt-safety-loaded')
    loaded.load_state_dict(ckpt['message_hub'])
    buffer = loaded.get_scalar('train/loss')
    assert buffer.mean() == 1.0 and buffer.current() == 1.5
    assert buffer.statistics('max') == 1.5
    # the hub itself is untouched: data_only_message_hub works on a copy
    assert hub.get_scalar('train/loss').statistics('min') == 0.5


def test_importing_mmens_patches_nothing():
    """After ``import mmens`` and registration, mmengine's CheckpointLoader, HistoryBuffer
    and torch's weights-only allow-list are what they were."""
    script = textwrap.dedent('''
        import torch.serialization as ts
        from mmengine.logging.history_buffer import HistoryBuffer
        from mmengine.runner.checkpoint import CheckpointLoader

        def state():
            return (CheckpointLoader._schemes[''], dict(vars(HistoryBuffer)),
                    list(ts.get_safe_globals()))

        before = state()
        import mmens, mmens.ops
        from mmens.utils import register_all_modules
        register_all_modules()
        import mmens.engine.runner
        print(before == state(), state()[0].__module__)
    ''')
    proc = cli(['-c', script])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ['True', 'mmengine.runner.checkpoint']


def test_ensemble_runner_saves_weights_only_checkpoints_and_resumes(tmp_path):
    """The Runner of mmens configs: its checkpoints load weights-only, --resume (auto)
    goes on from them, and resuming from a checkpoint that would run code is refused."""
    from mmengine.config import Config

    from mmens.registry import RUNNERS
    from mmens.utils import UnsafeCheckpointError, safe_torch_load
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'learned',
                                   'learned-weights_6members_coco-real-val.py'))
    cfg.merge_from_dict({'train_dataloader.dataset.indices': 16,
                         'val_dataloader.dataset.indices': 4,
                         'default_hooks.checkpoint.interval': 1, 'work_dir': str(tmp_path),
                         'experiment_name': 'first'})
    RUNNERS.build(cfg).train()
    ckpt = str(tmp_path / 'epoch_1.pth')
    saved = safe_torch_load(ckpt)
    assert saved['meta']['iter'] == 1 and 'log_scalars' in saved['message_hub']
    cfg.merge_from_dict({'resume': True, 'train_cfg.steps': 2, 'experiment_name': 'second'})
    runner = RUNNERS.build(cfg)
    runner.train()
    assert runner.iter == 2 and safe_torch_load(ckpt)['meta']['iter'] == 2
    path, marker = evil_checkpoint(tmp_path)
    cfg.merge_from_dict({'load_from': path, 'experiment_name': 'third'})
    with pytest.raises(UnsafeCheckpointError, match=re.escape(expected(path))):
        RUNNERS.build(cfg).train()
    assert not marker.exists()


def cli(args):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize('tool', ['fuse_results', 'test'])
def test_cli_refuses_with_one_line(tmp_path, tool):
    path, marker = evil_checkpoint(tmp_path)
    if tool == 'fuse_results':
        preds = sorted(glob.glob(osp.join(DATA, 'predictions', 'val', '*.json')))
        code, out, err = run_tool('tools/analysis_tools/fuse_results.py', '--ann',
                                  osp.join(DATA, 'annotations', 'val.json'), '--preds', *preds,
                                  '--method', 'learned', '--checkpoint', path)
    else:
        code, out, err = run_tool('tools/test.py', WBF, path, '--work-dir', tmp_path / 'work')
    assert code == 2, out[-2000:] + err[-2000:]
    assert 'Traceback' not in err + out
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines == [f'error: {expected(path)}'], err[-3000:]
    assert not marker.exists()
