"""tools/analysis_tools/demo.py: its cache is invalidated by a change to mmens' code or to any config."""
import os.path as osp

from conftest import ROOT, load_tool


def test_cache_key_covers_code_and_base_configs(tmp_path, monkeypatch):
    demo = load_tool('demo')
    files = demo.source_files()
    for f in ('mmens/models/detectors/cel_detector.py', 'mmens/ops/perturbed_loss.py',
              'configs/_base_/datasets/coco_real_cached.py',
              'configs/cel/cel_budget-0.4s_6members_coco-real-val.py'):
        assert osp.join(ROOT, f) in files, f
    data, code = tmp_path / 'data.json', tmp_path / 'code.py'
    data.write_text('[]')
    code.write_text('x = 1\n')
    monkeypatch.setattr(demo, 'source_files', lambda: [str(code)])
    before = demo.data_hash([str(data)])
    assert demo.data_hash([str(data)]) == before
    code.write_text('x = 2\n')
    assert demo.data_hash([str(data)]) != before
