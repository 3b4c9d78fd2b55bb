"""EnsembleTTAModel: mmdet's DetTTAModel with the views merged by mmens' fusion rules."""
import copy
import glob
import os.path as osp

import pytest
import torch
from mmdet.structures import DetDataSample
from mmengine.config import Config, ConfigDict
from mmengine.registry import DefaultScope
from mmengine.structures import InstanceData
from torch import nn

from conftest import ROOT
from mmens.models.tta import EnsembleTTAModel, load_view_weights
from mmens.registry import MODELS

H, W = 60, 80  # original image (height, width)


class Dummy(nn.Module):
    """What BaseTTAModel wraps (it only asks for ``test_step``)."""

    def test_step(self, data):
        return data


def sample(boxes, scores, labels, flip=False):
    s = DetDataSample(metainfo=dict(ori_shape=(H, W), img_shape=(H, W), flip=flip,
                                    flip_direction='horizontal' if flip else None))
    s.pred_instances = InstanceData(bboxes=boxes, scores=scores, labels=labels)
    return s


def random_view(gen, n):
    """``n`` random boxes in the image (labels 0..2, scores in (0, 1))."""
    xy = torch.rand(n, 2, generator=gen) * torch.tensor([W - 10.0, H - 10.0])
    wh = 2 + torch.rand(n, 2, generator=gen) * 20
    boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([W, H]))], 1)
    return boxes, torch.rand(n, generator=gen), torch.randint(0, 3, (n, ), generator=gen)


def flipped(boxes):
    return torch.stack([W - boxes[:, 2], boxes[:, 1], W - boxes[:, 0], boxes[:, 3]], 1)


def rows(inst):
    """Detections as sorted rows (label, score, box) for order-free comparison."""
    t = torch.cat([inst.labels[:, None].double(), inst.scores[:, None].double(),
                   inst.bboxes.double()], 1)
    return t[torch.argsort(t[:, 1] * 10 + t[:, 0])]


def test_nms_merge_is_mmdets_det_tta_model():
    """method='nms' at DetTTAModel's IoU 0.5 gives DetTTAModel's merge (flips undone, class-
    aware NMS over the views, 100 per image) on a batch of two images of three views."""
    from mmdet.models.test_time_augs import DetTTAModel
    gen = torch.Generator().manual_seed(0)
    batch = []
    for _ in range(2):
        views = [random_view(gen, 60) for _ in range(3)]
        batch.append([sample(b, s, l) for b, s, l in views[:2]]
                     + [sample(flipped(views[2][0]), views[2][1], views[2][2], flip=True)])
    ours = EnsembleTTAModel(Dummy(), fusion=dict(method='nms', iou_thr=0.5))
    ref = DetTTAModel(module=Dummy(), tta_cfg=ConfigDict(
        nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
    got = ours.merge_preds(copy.deepcopy(batch))
    want = ref.merge_preds(copy.deepcopy(batch))
    for g, w in zip(got, want):
        assert 50 < len(w.pred_instances) <= 100
        torch.testing.assert_close(rows(g.pred_instances), rows(w.pred_instances),
                                   atol=1e-4, rtol=0)


@pytest.mark.parametrize('method', ['wbf', 'nmw', 'nms'])
def test_a_view_and_its_flip_merge_into_the_view(method):
    """Identical views (the second flipped, flip recorded in its metainfo) fuse back into
    the view itself: boxes on a grid (no overlap within a view)."""
    grid = torch.arange(5.0) * 15
    xy = torch.cartesian_prod(grid, grid[:3] + 2)  # [15, 2]
    boxes = torch.cat([xy, xy + 10], 1)
    scores = torch.linspace(0.9, 0.2, 15)
    labels = torch.arange(15) % 3
    views = [sample(boxes, scores, labels), sample(flipped(boxes), scores, labels, flip=True)]
    merged = EnsembleTTAModel(Dummy(), fusion=dict(method=method)).merge_preds([views])
    want = rows(InstanceData(bboxes=boxes, scores=scores, labels=labels))
    torch.testing.assert_close(rows(merged[0].pred_instances), want, atol=1e-4, rtol=0)


def load_test_tool():
    """tools/test.py as a module (a script named like the standard library's test)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location('mmens_test_tool',
                                                  osp.join(ROOT, 'tools', 'test.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def learned_checkpoint(path, phi, extra=None):
    """A learned-weights ensemble checkpoint over views 'plain' and 'flip' (as
    fit_ensemble.py writes: state_dict and the config in meta), its WBF thresholds
    chosen as 0.65 / avg; ``extra`` entries are added to its state_dict."""
    cfg = Config.fromfile(sorted(glob.glob(osp.join(ROOT, 'configs', 'learned', '*.py')))[0])
    cfg.model.members = ['plain', 'flip']
    with DefaultScope.overwrite_default_scope('mmens'):
        model = MODELS.build(cfg.model)
    with torch.no_grad():
        model.head.phi.copy_(torch.tensor(phi))
    model.set_fusion_cfg(0.65, 0.0, 'avg')
    state = dict(model.state_dict(), **(extra or {}))
    torch.save(dict(state_dict=state, meta=dict(cfg=cfg.pretty_text)), path)
    return model.eval().head.member_weights().tolist()


def test_view_weights_from_a_learned_checkpoint(tmp_path):
    path = str(tmp_path / 'learned.pth')
    weights = learned_checkpoint(path, [1.0, -1.0])
    assert weights[0] > 1.5 * weights[1]
    learned = dict(iou_thr=0.65, skip_box_thr=0.0, conf_type='avg')
    assert load_view_weights(path) == (weights, learned)
    assert load_view_weights(path, ['flip', 'plain']) == (weights[::-1], learned)
    tta = EnsembleTTAModel(Dummy(), weights_from=path)
    assert tta.view_weights == pytest.approx(weights) and tta.fusion_cfg == learned
    explicit = EnsembleTTAModel(Dummy(), fusion=dict(iou_thr=0.5), weights_from=path)
    assert explicit.fusion_cfg == dict(learned, iou_thr=0.5)  # the config's keys win
    # a box only the lighter view found scores its weighted share, not the plain average
    box = torch.tensor([[10.0, 10.0, 30.0, 30.0]])
    empty = torch.zeros(0, 4)
    views = [sample(empty, torch.zeros(0), torch.zeros(0, dtype=torch.long)),
             sample(box, torch.tensor([0.8]), torch.tensor([1]))]
    got = tta.merge_preds([copy.deepcopy(views)])[0].pred_instances.scores
    equal = EnsembleTTAModel(Dummy()).merge_preds([copy.deepcopy(views)])[0]
    assert float(equal.pred_instances.scores) == pytest.approx(0.4)
    assert float(got) == pytest.approx(0.8 * weights[1] / sum(weights))
    with pytest.raises(ValueError, match=r"view_names \['mirror'\] are not among"):
        load_view_weights(path, ['mirror', 'plain'])
    # a checkpoint of the deleted per-member calibration: refused, not fused uncalibrated
    learned_checkpoint(path, [1.0, -1.0], extra={'head.cal_shift': torch.zeros(2)})
    with pytest.raises(ValueError, match=r"carries \['head.cal_shift'\]"):
        EnsembleTTAModel(Dummy(), weights_from=path)


def test_mistakes_are_one_line():
    with pytest.raises(ValueError, match="fusion.method 'wbf2' is not one of"):
        EnsembleTTAModel(Dummy(), fusion=dict(method='wbf2'))
    with pytest.raises(ValueError, match="fusion.sigma is not an argument of 'wbf'"):
        EnsembleTTAModel(Dummy(), fusion=dict(sigma=0.1))
    with pytest.raises(ValueError, match='weights must be positive'):
        EnsembleTTAModel(Dummy(), weights=[1.0, 0.0])
    with pytest.raises(ValueError, match='checkpoint /no/such.pth does not exist'):
        EnsembleTTAModel(Dummy(), weights_from='/no/such.pth')
    gen = torch.Generator().manual_seed(1)
    views = [sample(*random_view(gen, 4)) for _ in range(2)]
    with pytest.raises(ValueError, match="3 view weights for 2 views of the tta_pipeline"):
        EnsembleTTAModel(Dummy(), weights=[1, 2, 3]).merge_preds([views])


@pytest.mark.parametrize('name,num_views', [
    ('retinanet_r50_fpn_1x_coco-real-val_wbf-tta.py', 6),
    ('faster-rcnn_r50_fpn_1x_coco-real-val_wbf-tta.py', 4)])
def test_tta_configs_build_their_model_and_views(name, num_views):
    """configs/tta/: the mmdet detector wrapped as tools/test.py --tta does, and the views
    the tta_pipeline makes of an embedded val image."""
    from mmengine.registry import DATASETS
    cfg = load_test_tool().tta_cfg(Config.fromfile(osp.join(ROOT, 'configs', 'tta', name)),
                                   'ckpt.pth')
    assert cfg.default_scope == 'mmens' and cfg.runner_type == 'EnsembleRunner'
    with DefaultScope.overwrite_default_scope('mmens'):
        model = MODELS.build(cfg.model)
        data = DATASETS.build(dict(cfg.test_dataloader.dataset, indices=1))[0]
    assert type(model) is EnsembleTTAModel and model.method == 'wbf'
    assert model.fusion_cfg == dict(iou_thr=0.55, skip_box_thr=0.0, conf_type='avg')
    assert len(data['inputs']) == len(data['data_samples']) == num_views
    assert [s.flip for s in data['data_samples'][:2]] == [True, False]
