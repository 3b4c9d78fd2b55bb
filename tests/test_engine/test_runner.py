"""EnsembleRunner's config text: formatted once per content, equal to mmengine's."""
import copy
import os.path as osp

from mmengine.config import Config

from conftest import ROOT
from mmens.engine.runner import _TextOnceConfig

CONFIG = osp.join(ROOT, 'configs', 'learned', 'learned-weights_6members_coco-real-val.py')


def test_config_text_is_formatted_once_per_content(monkeypatch):
    plain = Config.fromfile(CONFIG)
    want = plain.pretty_text
    calls = []
    formatted = Config.pretty_text

    def counting(cfg):
        calls.append(1)
        return formatted.fget(cfg)

    monkeypatch.setattr(Config, 'pretty_text', property(counting))
    once = copy.copy(plain)
    object.__setattr__(once, '__class__', _TextOnceConfig)
    assert once.pretty_text == want and once.pretty_text == want and len(calls) == 1
    copied = copy.deepcopy(once)  # as the Runner keeps it: the text comes along
    assert type(copied) is _TextOnceConfig and copied.pretty_text == want
    assert len(calls) == 1 and 'text_once' not in copied.keys()
    copied.train_cfg.steps = 2  # a changed config is formatted again
    assert 'steps=2' in copied.pretty_text and len(calls) == 2
    assert once.pretty_text == want and len(calls) == 2
    assert copied.dump() == copied.pretty_text and len(calls) == 2


def test_the_runner_keeps_a_text_once_config(tmp_path):
    from mmens.registry import RUNNERS
    cfg = Config.fromfile(CONFIG)
    cfg.work_dir = str(tmp_path)
    runner = RUNNERS.build(cfg)
    assert type(runner.cfg) is _TextOnceConfig and type(cfg) is Config
    assert runner.cfg.pretty_text == Config.pretty_text.fget(runner.cfg)  # mmengine's text
