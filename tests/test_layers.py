"""Layers point one way: ops ← datasets/evaluation ← models ← engine/apis ← tools.

A static scan of every import of every module (also those inside functions), so that a
lower layer cannot reach up even lazily.
"""
import ast
import os
import os.path as osp

from conftest import ROOT

#: mmens subpackage → the mmens subpackages its modules may import (besides itself and
#: mmens.registry / mmens.utils / mmens.version, which every layer may use)
ALLOWED = {
    'ops': set(),
    'visualization': {'ops'},
    'datasets': {'ops'},
    'evaluation': {'ops'},
    'models': {'ops', 'datasets'},
    'engine': {'ops', 'datasets', 'evaluation', 'models', 'visualization'},
    'apis': {'ops', 'datasets', 'evaluation', 'models', 'visualization'},
}
SHARED = {'registry', 'utils', 'version'}


def mmens_imports(path: str, package: str):
    """``(line, imported mmens subpackage)`` of every import in module ``path`` of the
    dotted ``package`` (relative imports resolved)."""
    with open(path, encoding='utf-8') as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')[:len(package.split('.')) - node.level + 1]
                names = ['.'.join(base + ([node.module] if node.module else []))]
            else:
                names = [node.module or '']
        else:
            continue
        for name in names:
            parts = name.split('.')
            if parts[0] == 'mmens' and len(parts) > 1:
                yield node.lineno, parts[1]


def layer_violations() -> list:
    bad = []
    for layer, allowed in ALLOWED.items():
        for folder, _, files in os.walk(osp.join(ROOT, 'mmens', layer)):
            package = osp.relpath(folder, ROOT).replace(os.sep, '.')
            for name in sorted(f for f in files if f.endswith('.py')):
                path = osp.join(folder, name)
                for line, target in mmens_imports(path, package):
                    if target not in allowed | SHARED | {layer}:
                        bad.append(f'{osp.relpath(path, ROOT)}:{line} imports mmens.{target}')
    return bad


def test_each_layer_imports_only_the_layers_below_it():
    assert not layer_violations(), '\n'.join(layer_violations())


def test_the_scan_resolves_relative_imports(tmp_path):
    probe = tmp_path / 'probe.py'
    probe.write_text('from ..evaluation.coco_eval import x\nfrom .utils import y\n'
                     'def f():\n    import mmens.engine\n')
    found = list(mmens_imports(str(probe), 'mmens.models.detectors'))
    # ..evaluation of mmens.models.detectors is mmens.models.evaluation
    assert found == [(1, 'models'), (2, 'models'), (4, 'engine')]


def test_batch_helpers_import_no_openmmlab_package():
    path = osp.join(ROOT, 'mmens', 'utils', 'batch.py')
    with open(path, encoding='utf-8') as f:
        tree = ast.parse(f.read())
    imported = {a.name.split('.')[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names} | {(n.module or '').split('.')[0] for n in ast.walk(tree)
                                     if isinstance(n, ast.ImportFrom)}
    assert not imported & {'mmdet', 'mmengine', 'mmcv', 'mmens'}, imported
