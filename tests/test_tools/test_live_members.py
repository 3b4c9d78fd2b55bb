"""Live members and prediction dumping, with small mmdet detectors (random weights).

dump → validate → fuse must give what the live ensemble gives on the same images.
"""
import json
import os.path as osp

import numpy as np
import pytest
import torch

from conftest import DATA, ROOT
from test_train_test import tool

MEMBERS = osp.join(ROOT, 'tests', 'data', 'members')
LIVE_CFG = osp.join(ROOT, 'configs', 'live', 'wbf_retinanet-fcos-live_coco-real-val.py')
IMG_DIR = osp.join(DATA, 'images', 'val')
NUM_IMAGES = 3


def save_member(cfg_path: str, out: str, seed: int) -> None:
    """Build a tiny member with seeded random weights and save an mmdet-style checkpoint."""
    from mmdet.registry import MODELS
    from mmengine.config import Config
    cfg = Config.fromfile(cfg_path)
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model)
    model.init_weights()
    with torch.no_grad():  # spread the scores (a few high, most low) so that fusion and
        for name, p in model.named_parameters():  # the low-score threshold have work to do
            if name.endswith(('retina_cls.bias', 'conv_cls.bias')):
                p.fill_(-3.0)
            elif name.endswith(('retina_cls.weight', 'conv_cls.weight')):
                p.mul_(30.0)
    from mmdet.datasets import CocoDataset
    meta = dict(dataset_meta=dict(classes=CocoDataset.METAINFO['classes']))
    torch.save(dict(state_dict=model.state_dict(), meta=meta), out)


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('live')
    ann = json.load(open(osp.join(DATA, 'annotations', 'val.json')))
    images = sorted(ann['images'], key=lambda im: im['id'])[:NUM_IMAGES]
    ids = {im['id'] for im in images}
    sub = dict(ann, images=images,
               annotations=[a for a in ann['annotations'] if a['image_id'] in ids])
    ann_file = str(tmp / 'sub.json')
    json.dump(sub, open(ann_file, 'w'))
    ckpts = {}
    for seed, name in enumerate(['tiny_retinanet', 'tiny_fcos']):
        ckpts[name] = str(tmp / f'{name}.pth')
        save_member(osp.join(MEMBERS, f'{name}.py'), ckpts[name], seed)
    return tmp, ann_file, ckpts


def live_specs(ckpts):
    out = []
    for name in ['tiny_retinanet', 'tiny_fcos']:
        base = dict(config=osp.join(MEMBERS, f'{name}.py'), checkpoint=ckpts[name])
        out += [dict(base, name=name), dict(base, name=name + '-hflip', flip=True)]
    return out


def test_dump_validate_fuse_equals_live_ensemble(setup, capsys):
    tmp, ann_file, ckpts = setup
    outs = [str(tmp / 'preds' / 'tiny_retinanet.json'), str(tmp / 'preds' / 'tiny_fcos.json')]
    out = tool('tools/analysis_tools/dump_predictions.py',
               osp.join(MEMBERS, 'tiny_retinanet.py'), ckpts['tiny_retinanet'],
               osp.join(MEMBERS, 'tiny_fcos.py'), ckpts['tiny_fcos'],
               '--ann', ann_file, '--img-dir', IMG_DIR, '--out', *outs, '--tta-flip')
    files = [str(tmp / 'preds' / f'{n}.json') for n in
             ['tiny_retinanet', 'tiny_retinanet-hflip', 'tiny_fcos', 'tiny_fcos-hflip']]
    for f in files:
        assert osp.isfile(f), out
        entries = json.load(open(f))
        assert len({e['image_id'] for e in entries}) == NUM_IMAGES
        # score_thr 0.001 / max_per_img 100: each image keeps (up to) 100 boxes, not the
        # few above the member config's own score_thr
        per_image = np.bincount([e['image_id'] for e in entries])
        assert per_image.max() == 100 and (per_image[per_image > 0] >= 90).all()
    # a flipped member is not its unflipped self
    a, b = (json.load(open(files[i])) for i in (0, 1))
    assert [e['bbox'] for e in a[:20]] != [e['bbox'] for e in b[:20]]
    # validate and fuse in process (their command lines are tested in their own files)
    from conftest import load_tool
    load_tool('validate_predictions').main(['--ann', ann_file, '--preds', *files])
    assert capsys.readouterr().out.count(': valid,') == 4
    fused = str(tmp / 'fused.json')
    load_tool('fuse_results').main(['--ann', ann_file, '--preds', *files, '--method', 'wbf',
                                    '--out', fused])

    # the live ensemble: tools/test.py on the raw images, with the example config's
    # dataset and pipeline and the tiny members
    prefix = str(tmp / 'live')
    cfg = tmp / 'live_tiny.py'
    cfg.write_text(f'_base_ = {LIVE_CFG!r}\nmodel = dict(members={live_specs(ckpts)!r})\n')
    opts = [f'test_dataloader.dataset.ann_file={ann_file}',
            f'test_evaluator.ann_file={ann_file}', f'test_evaluator.outfile_prefix={prefix}']
    out = tool('tools/test.py', cfg, '--work-dir', tmp / 'work', '--cfg-options', *opts)
    assert 'coco/bbox_mAP' in out, out[-3000:]
    live = json.load(open(prefix + '.bbox.json'))
    cached = json.load(open(fused))
    assert len(live) == len(cached) > 0

    def table(entries):
        rows = sorted((e['image_id'], e['category_id'], -e['score'], *e['bbox'])
                      for e in entries)
        return np.array(rows, dtype=np.float64)

    t_live, t_cached = table(live), table(cached)
    np.testing.assert_array_equal(t_live[:, :2], t_cached[:, :2])
    np.testing.assert_allclose(t_live[:, 2:], t_cached[:, 2:], atol=2e-3)


def test_live_members_are_frozen_and_not_saved(setup):
    from mmdet.registry import MODELS
    _, _, ckpts = setup
    model = MODELS.build(dict(type='EnsembleDetector', members=live_specs(ckpts),
                              head=dict(type='LearnedWeightsHead')))
    assert model.members == ('tiny_retinanet', 'tiny_retinanet-hflip', 'tiny_fcos',
                             'tiny_fcos-hflip')
    assert len(model.live_members.models) == 2  # flipped variants share the model
    assert not any('retina' in k or 'backbone' in k for k in model.state_dict())
    n_member_params = sum(p.numel() for m, _ in model.live_members.models.values()
                          for p in m.parameters())
    assert n_member_params > 0
    assert sum(p.numel() for p in model.parameters()) < n_member_params
    model.train()
    for m, _ in model.live_members.models.values():
        assert not m.training
        assert not any(p.requires_grad for p in m.parameters())


def test_save_members_puts_the_frozen_members_in_the_checkpoint(setup):
    from mmdet.registry import MODELS
    _, _, ckpts = setup
    model = MODELS.build(dict(type='FusionDetector', members=live_specs(ckpts),
                              save_members=True))
    keys = model.state_dict().keys()
    assert any(k.startswith('member_models.0.backbone') for k in keys)
    assert any(k.startswith('member_models.1.bbox_head') for k in keys)
    model.train()
    assert not any(m.training for m in model.member_models.modules())
    with pytest.raises(ValueError, match='save_members=True needs live members'):
        MODELS.build(dict(type='FusionDetector', members=['a', 'b'], save_members=True))


def test_live_learned_ensemble_trains_on_raw_images(setup):
    from mmdet.registry import MODELS
    from mmens.apis.dump import load_image
    _, ann_file, ckpts = setup
    model = MODELS.build(dict(type='EnsembleDetector', members=live_specs(ckpts),
                              head=dict(type='LearnedFusionHead', theta_mode='global')))
    ann = json.load(open(ann_file))
    info = ann['images'][0]
    img = torch.from_numpy(load_image(osp.join(IMG_DIR, info['file_name']))).permute(2, 0, 1)
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    sample = DetDataSample(metainfo=dict(img_shape=(info['height'], info['width'])))
    gts = [a for a in ann['annotations'] if a['image_id'] == info['id']]
    boxes = torch.tensor([[a['bbox'][0], a['bbox'][1], a['bbox'][0] + a['bbox'][2],
                           a['bbox'][1] + a['bbox'][3]] for a in gts]).reshape(-1, 4)
    sample.gt_instances = InstanceData(bboxes=boxes, labels=torch.zeros(len(gts)).long())
    data = model.data_preprocessor(dict(inputs=[dict(img=img)], data_samples=[sample]), True)
    losses = model.loss(data['inputs'], data['data_samples'])
    total = sum(v for k, v in losses.items() if 'loss' in k)
    total.backward()
    assert all(p.grad is not None for p in model.head.parameters() if p.requires_grad)


def test_bad_live_member_specs(setup):
    from mmens.models.live_members import LiveMembers, parse_members
    _, _, ckpts = setup
    cfg = osp.join(MEMBERS, 'tiny_retinanet.py')
    with pytest.raises(ValueError, match='config file .* does not exist'):
        LiveMembers([dict(config='nope.py', checkpoint=None)])
    with pytest.raises(ValueError, match='checkpoint file .* does not exist'):
        LiveMembers([dict(config=cfg, checkpoint='nope.pth')])
    with pytest.raises(ValueError, match='unknown keys'):
        LiveMembers([dict(config=cfg, checkpoint=None, colour='red')])
    with pytest.raises(ValueError, match='unique'):
        LiveMembers([dict(config=cfg, checkpoint=None)] * 2)
    with pytest.raises(ValueError, match='either member names'):
        parse_members(['a', dict(config=cfg)])


def test_dump_tool_errors(setup, tmp_path):
    tmp, ann_file, ckpts = setup
    cfg = osp.join(MEMBERS, 'tiny_retinanet.py')
    args = [cfg, ckpts['tiny_retinanet'], '--ann', ann_file, '--img-dir', IMG_DIR]
    import pytest
    from conftest import load_tool, run_tool
    # through the CLI: a non-zero exit and one line, no traceback
    code, _, err = run_tool('tools/analysis_tools/dump_predictions.py', *args, '--out',
                            'a.json', 'b.json')
    assert code == 2 and 'Traceback' not in err and len(err.strip().splitlines()) == 1
    assert '--out names 2 files for 1' in err, err[-2000:]
    # in process (run_cli turns the ValueError into that line)
    with pytest.raises(ValueError, match='image file .* does not exist'):
        load_tool('dump_predictions').main(args + ['--out', 'a.json', '--img-dir',
                                                   str(tmp_path)])


def test_cel_with_image_only_selection_runs_only_the_selected_live_members(setup):
    """e2e-CEL whose selection net reads only the image: members it does not select are
    never run (LiveMembers.runs counts the (member, image) forwards)."""
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmens.apis.dump import load_image
    _, ann_file, ckpts = setup
    model = MODELS.build(dict(
        type='CELDetector', members=live_specs(ckpts),
        selection_net=dict(type='MemberSelectionNet', use_meta=False, image_channels=128,
                           image_backbone=dict(type='ResNet', depth=18, base_channels=16,
                                               out_indices=(3,), norm_eval=False)),
        selector=dict(k=1, num_samples=10),
        data_preprocessor=dict(type='EnsembleDataPreprocessor', image_preprocessor=dict(
            type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53],
            std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_size_divisor=32))))
    model.eval()
    ann = json.load(open(ann_file))
    imgs, samples = [], []
    for info in ann['images']:
        img = load_image(osp.join(IMG_DIR, info['file_name']))
        imgs.append(dict(img=torch.from_numpy(img).permute(2, 0, 1).contiguous()))
        samples.append(DetDataSample(metainfo=dict(img_shape=img.shape[:2],
                                                   ori_shape=img.shape[:2],
                                                   img_id=info['id'])))
    data = model.data_preprocessor(dict(inputs=imgs, data_samples=samples), False)
    assert data['inputs']['img'].dim() == 4 and len(data['inputs']['img_raw']) == NUM_IMAGES
    out = model.predict(data['inputs'], data['data_samples'])
    runs = model.live_members.runs
    assert sum(runs) == NUM_IMAGES  # one member per image, not 4
    for sample in out:
        assert sum(sample.selected_members) == 1
        assert len(sample.pred_instances.scores) > 0
