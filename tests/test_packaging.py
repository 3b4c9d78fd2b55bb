"""The wheel holds the product: mmens' own packages, no report code, and the runtime
requirements cover exactly what the package imports (static checks; building the wheel
itself compiles the kernel, too slow for the suite)."""
import ast
import importlib.util
import os
import os.path as osp
import sys

from conftest import ROOT

PKG = osp.join(ROOT, 'mmens')
#: import name → requirement name, where they differ
DISTRIBUTIONS = {'sklearn': 'scikit-learn', 'ensemble_boxes': 'ensemble-boxes'}
#: test and report requirements: the installed package must not import them
NOT_RUNTIME = ('ensemble_boxes', 'sklearn', 'pytest')


def load_setup():
    """setup.py as a module (its ``setup()`` call runs only as a script)."""
    spec = importlib.util.spec_from_file_location('mmens_setup', osp.join(ROOT, 'setup.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def imported_modules(path: str) -> set:
    """Top-level names of every module ``path`` imports, at module level or inside a
    function, by ``import``, ``from ... import`` or ``importlib.import_module('...')``."""
    with open(path, encoding='utf-8') as f:
        tree = ast.parse(f.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split('.')[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split('.')[0])
        elif (isinstance(node, ast.Call) and getattr(node.func, 'attr', getattr(
                node.func, 'id', None)) in ('import_module', '__import__') and node.args
              and isinstance(node.args[0], ast.Constant)):
            names.add(str(node.args[0].value).split('.')[0])
    return names


def package_imports() -> dict:
    """Module path (relative to the repository) → its imported top-level names."""
    out = {}
    for folder, _, files in os.walk(PKG):
        for name in files:
            if name.endswith('.py'):
                path = osp.join(folder, name)
                out[osp.relpath(path, ROOT)] = imported_modules(path)
    return out


def test_no_module_of_the_package_imports_a_test_or_report_requirement():
    offenders = {path: sorted(names & set(NOT_RUNTIME))
                 for path, names in package_imports().items() if names & set(NOT_RUNTIME)}
    assert not offenders, offenders


def test_the_scanner_sees_nested_and_dynamic_imports(tmp_path):
    probe = tmp_path / 'probe.py'
    probe.write_text('def f():\n    from sklearn.linear_model import X\n'
                     "    import importlib\n    importlib.import_module('ensemble_boxes')\n")
    assert {'sklearn', 'ensemble_boxes', 'importlib'} <= imported_modules(str(probe))


def test_setup_packages_are_mmens_and_all_of_it():
    setup = load_setup()
    packages = set(setup.PACKAGES)
    assert all(p == 'mmens' or p.startswith('mmens.') for p in packages), packages
    assert 'mmens.experiments' not in packages
    # every folder of mmens with Python modules is a package that the wheel holds
    folders = {osp.relpath(folder, ROOT).replace(os.sep, '.')
               for folder, _, files in os.walk(PKG)
               if any(f.endswith('.py') for f in files)}
    assert folders == packages, folders ^ packages


def test_runtime_requirements_cover_what_the_package_imports():
    setup = load_setup()
    runtime = {r.split(';')[0].split('[')[0].split('=')[0].split('<')[0].split('>')[0]
               .strip().lower() for f in ('runtime.txt', 'mminstall.txt', 'torch.txt')
               for r in setup.parse_requirements(f)}
    assert not runtime & {'ensemble-boxes', 'scikit-learn', 'pytest', 'pytest-xdist'}
    third_party = set().union(*package_imports().values()) - set(
        sys.stdlib_module_names) - {'mmens'}
    needed = {DISTRIBUTIONS.get(m, m.replace('_', '-')).lower() for m in third_party}
    assert needed <= runtime, needed - runtime


def test_the_wheel_requires_the_torch_its_kernel_is_compiled_against(monkeypatch):
    import torch
    setup = load_setup()
    assert setup.torch_requirement() == [f"torch=={torch.__version__.split('+')[0]}"]
    monkeypatch.setenv('MMENS_WITH_KERNEL', '0')
    assert setup.torch_requirement() == ['torch']
