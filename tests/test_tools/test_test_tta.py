"""tools/test.py CONFIG CKPT --tta end to end: a tiny random-weight RetinaNet (checkpoint
written here) under configs/tta/'s EnsembleTTAModel, on one embedded val image."""
import copy
import json
import os.path as osp
import pickle
import sys

import pytest
import torch

from conftest import DATA, ROOT
from test_live_members import save_member

TTA_CFG = osp.join(ROOT, 'configs', 'tta', 'retinanet_r50_fpn_1x_coco-real-val_wbf-tta.py')


def tiny_config(tmp, ann_file):
    """configs/tta's RetinaNet shrunk to ResNet-18 / 32 channels, two views (flip) at 256."""
    path = tmp / 'tiny_tta.py'
    path.write_text(f"""_base_ = {TTA_CFG!r}
model = dict(backbone=dict(depth=18, init_cfg=None),
             neck=dict(in_channels=[64, 128, 256, 512], out_channels=32),
             bbox_head=dict(in_channels=32, feat_channels=32, stacked_convs=1))
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale=(256, 256), keep_ratio=True)],
        [dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)],
        [dict(type='LoadAnnotations', with_bbox=True)],
        [dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                               'scale_factor', 'flip', 'flip_direction'))]])]
test_dataloader = dict(dataset=dict(ann_file={ann_file!r}))
test_evaluator = dict(ann_file={ann_file!r})
""")
    return str(path)


def one_image_ann(tmp):
    ann = json.load(open(osp.join(DATA, 'annotations', 'val.json')))
    image = min(ann['images'], key=lambda im: im['id'])
    sub = dict(ann, images=[image],
               annotations=[a for a in ann['annotations'] if a['image_id'] == image['id']])
    path = str(tmp / 'one.json')
    json.dump(sub, open(path, 'w'))
    return path


def in_process_views(cfg_path, ckpt):
    """The TTA model of tools/test.py --tta built here, and its per-view predictions."""
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import DATASETS, MODELS, DefaultScope
    from test_ensemble_tta import load_test_tool
    cfg = load_test_tool().tta_cfg(Config.fromfile(cfg_path), ckpt)
    with DefaultScope.overwrite_default_scope('mmens'):
        model = MODELS.build(cfg.model)
        data = pseudo_collate([DATASETS.build(cfg.test_dataloader.dataset)[0]])
    model.module.load_state_dict(torch.load(ckpt, weights_only=True)['state_dict'])
    model.eval()
    with torch.no_grad():
        views = [model.module.test_step(dict(inputs=i, data_samples=s))[0]
                 for i, s in zip(data['inputs'], data['data_samples'])]
    return model, views


def test_tools_test_tta_end_to_end(tmp_path, monkeypatch):
    """tools/test.py's main() with its command line (in this process: the interpreter's
    start-up and imports would be most of a subprocess' time)."""
    sys.path.insert(0, osp.join(ROOT, 'tests', 'test_models'))
    from test_ensemble_tta import load_test_tool
    ann_file = one_image_ann(tmp_path)
    cfg = tiny_config(tmp_path, ann_file)
    ckpt = str(tmp_path / 'tiny.pth')
    save_member(cfg, ckpt, seed=0)
    from mmens.engine.runner import EnsembleRunner
    # the environment report (collect_env, seconds) is not what this test checks
    monkeypatch.setattr(EnsembleRunner, '_log_env', lambda self, env_cfg: None)
    monkeypatch.setattr(sys, 'argv', ['tools/test.py', cfg, ckpt, '--tta', '--work-dir',
                                      str(tmp_path / 'work'), '--out',
                                      str(tmp_path / 'preds.pkl')])
    load_test_tool().main()
    got = pickle.load(open(tmp_path / 'preds.pkl', 'rb'))[0]['pred_instances']

    # the same merge in process: the tool ran the detector on both views and fused them
    model, views = in_process_views(cfg, ckpt)
    assert [v.flip for v in views] == [True, False]
    want = model.merge_preds([copy.deepcopy(views)])[0].pred_instances
    assert 0 < len(got['scores']) <= 100
    torch.testing.assert_close(got['bboxes'], want.bboxes, atol=1e-3, rtol=0)
    torch.testing.assert_close(got['scores'], want.scores, atol=1e-5, rtol=0)
    # ... which is neither view alone: WBF averages the two views' scores
    for v in views:
        alone = v.pred_instances.scores
        assert len(alone) != len(want.scores) or not torch.allclose(alone, want.scores)



def test_tta_of_an_ensemble_config_is_refused_in_one_line():
    from mmengine.config import Config
    sys.path.insert(0, osp.join(ROOT, 'tests', 'test_models'))
    from test_ensemble_tta import load_test_tool
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'wbf', 'wbf_6members_coco-real-val.py'))
    with pytest.raises(ValueError, match='FusionDetector is an ensemble; --tta augments one'):
        load_test_tool().tta_cfg(cfg, 'ckpt.pth')
