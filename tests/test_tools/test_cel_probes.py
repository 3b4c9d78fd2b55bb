"""e2e-CEL's cost model: the selection reads only the probes, and charges what runs."""
import glob
import os.path as osp

import pytest
import torch

from conftest import DATA, ROOT

CEL_DEFAULT = sorted(glob.glob(osp.join(ROOT, 'configs', 'cel', '*.py')))[0]
MEMBERS = ['centernet-512', 'centernet-512-hflip', 'nanodet-416', 'nanodet-416-hflip',
           'yolofastestv2-352', 'yolofastestv2-352-hflip']


def recommended_model(budget=None):
    """The recommended config's model, its selection net's output layer given seeded random
    weights (as training moves it) so that the selection varies from image to image."""
    from mmengine.config import Config
    from mmens.registry import MODELS
    cfg = Config.fromfile(CEL_DEFAULT)
    model = MODELS.build(cfg.model).eval()
    if budget is not None:
        model.set_budget(budget=budget)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in (model.selection_net.mlp[0], model.selection_net.mlp[2]):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g))
    return model


def val_images(num=24) -> dict:
    """The packed cached predictions of the first ``num`` embedded val images."""
    from conftest import load_tool
    from mmens.apis import load_coco, load_member_batch
    coco = load_coco(osp.join(DATA, 'annotations', 'val.json'))
    batch = load_member_batch(coco, [osp.join(DATA, 'predictions', 'val', f'{m}.json')
                                     for m in MEMBERS], MEMBERS)
    return dict(load_tool('cross_val').subset_batch(batch, batch.img_ids[:num]).packed)


def scramble(packed: dict, members, seed=0) -> dict:
    """``packed`` with each of ``members``' predictions halved at random and its scores
    shuffled (the other members' rows unchanged)."""
    g = torch.Generator().manual_seed(seed)
    hit = torch.isin(packed['members'], torch.tensor(list(members)))  # [M]
    keep = ~hit | (torch.rand(hit.shape, generator=g) < 0.5)
    out = {k: (v if k == 'image_sizes' else v[keep]) for k, v in packed.items()}
    idx = hit[keep].nonzero().flatten()
    scores = out['scores'].clone()
    scores[idx] = scores[idx[torch.randperm(idx.numel(), generator=g)]]
    out['scores'] = scores
    return out


def test_selections_read_only_the_probes_and_cost_at_most_the_budget():
    packed = val_images()
    for budget in (0.4, 0.2):
        model = recommended_model(budget)
        assert [model.members[p] for p in model.probes] == ['yolofastestv2-352']
        with torch.no_grad():
            x, _ = model.select(packed)
            others = [m for m in range(6) if m not in model.probes]
            x_other, _ = model.select(scramble(packed, others))
            x_probe, _ = model.select(scramble(packed, model.probes))
        assert len({tuple(r) for r in x.tolist()}) > 1  # the selection varies per image
        assert torch.equal(x, x_other)  # nothing but the probe is read
        assert not torch.equal(x, x_probe)  # ... and the probe is
        # the reported cost: the probe, the selected members and the net, within budget
        info = model.fuse_with_metainfo(packed)[1]
        run = torch.maximum(x, model.probe_mask.float())
        expected = run @ model.member_seconds + model.selection_seconds
        assert torch.allclose(info['member_seconds'], expected)
        assert (info['member_seconds'] <= budget + 1e-6).all()
        assert 0 < float(model.selection_seconds) <= 0.05


def test_the_accuracy_mode_reports_every_member_it_reads():
    from mmengine.config import Config
    from mmens.registry import MODELS
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'cel', 'cel_k3_6members_coco-real-val.py'))
    model = MODELS.build(cfg.model).eval()
    info = model.fuse_with_metainfo(val_images(4))[1]
    assert (info['selected_members'].sum(1) == 3).all()
    total = float(model.member_seconds.sum() + model.selection_seconds)
    assert torch.allclose(info['member_seconds'], torch.full((4,), total))


def test_live_probe_cascade_runs_only_the_probe_and_the_selected_members(tmp_path):
    """Tiny live members: the probe runs on every image, every other member only on the
    images that select it (LiveMembers.runs counts the (member, image) forwards)."""
    from mmdet.structures import DetDataSample
    from mmens.apis.dump import load_image
    from mmens.registry import MODELS
    from test_live_members import IMG_DIR, MEMBERS as MEMBER_CFGS, save_member
    ckpt = str(tmp_path / 'tiny_retinanet.pth')
    save_member(osp.join(MEMBER_CFGS, 'tiny_retinanet.py'), ckpt, 0)
    config = tmp_path / 'tiny_retinanet_96.py'  # 96 px: only the calls matter here
    config.write_text(f"_base_ = {osp.join(MEMBER_CFGS, 'tiny_retinanet.py')!r}\n"
                      "test_pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', "
                      "scale=(96, 96), keep_ratio=True), dict(type='PackDetInputs')]\n"
                      'test_dataloader = dict(dataset=dict(pipeline=test_pipeline))\n')
    spec = dict(config=str(config), checkpoint=ckpt, score_thr=0.05)
    model = MODELS.build(dict(
        type='CELDetector', members=[dict(spec, name='a'), dict(spec, name='b', flip=True),
                                     dict(spec, name='probe', flip=True)],
        member_seconds=[0.1, 0.1, 0.01], probes=['probe'],
        selection_net=dict(type='MemberSelectionNet', hidden=8), selector=dict(budget=0.12),
        data_preprocessor=dict(type='EnsembleDataPreprocessor'))).eval()
    names = sorted(osp.basename(f) for f in glob.glob(osp.join(IMG_DIR, '*.jpg')))[:2]
    imgs = [load_image(osp.join(IMG_DIR, n)) for n in names]
    data = model.data_preprocessor(dict(
        inputs=[dict(img=torch.from_numpy(i).permute(2, 0, 1).contiguous()) for i in imgs],
        data_samples=[DetDataSample(metainfo=dict(img_shape=i.shape[:2], ori_shape=i.shape[:2]))
                      for i in imgs]), False)
    for bias, expect in [([1.0, -1.0, -1.0], [2, 0, 2]),  # the probe and member a
                         ([-1.0, -1.0, -0.5], [0, 0, 2])]:  # the probe alone
        model.live_members.runs = [0] * 3
        model.selection_net.set_init_scores(bias)
        with torch.no_grad():
            out = model.predict(data['inputs'], data['data_samples'])
        assert model.live_members.runs == expect
        for sample in out:
            run = [s or m == 2 for m, s in enumerate(sample.selected_members)]
            assert sample.member_seconds == pytest.approx(
                sum(c for c, r in zip([0.1, 0.1, 0.01], run) if r)
                + float(model.selection_seconds))


def test_a_checkpoint_keeps_its_measured_selection_seconds():
    """The selection's time measured at fit time is saved, and loading it sets the
    knapsack's budget (not the loading machine's measure)."""
    model = recommended_model()
    state = model.state_dict()
    assert 'selection_seconds' in state
    state['selection_seconds'] = torch.tensor(0.05)
    model.load_state_dict(state)
    assert float(model.selection_seconds) == pytest.approx(0.05)
    left = 0.4 - float(model.member_seconds[model.probe_index].sum()) - 0.05
    assert model.selector.budget == pytest.approx(left)
