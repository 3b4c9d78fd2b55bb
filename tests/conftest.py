import os
import os.path as osp
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DATA = osp.join(ROOT, 'data', 'coco_real')
# One OpenMP thread per test process: `make test` runs 2 xdist workers on 2 cores, and the
# processes tests start inherit this; at 2 threads each the 4+ threads contend for the 2
# cores and the suite took 5 min 08 s instead of 4 min 20 s.
os.environ.setdefault('OMP_NUM_THREADS', '1')

try:  # the mmdet layer (ops tests run without it): mmens' modules, default scope 'mmens'
    from mmens.utils import register_all_modules
    register_all_modules()
except ImportError:  # pragma: no cover
    pass


def load_tool(name: str):
    """Import ``tools/analysis_tools/<name>.py`` as a module (tools are scripts, not a
    package)."""
    import importlib.util
    tools = osp.join(ROOT, 'tools', 'analysis_tools')
    if tools not in sys.path:  # as when run as a script: its own folder first
        sys.path.insert(0, tools)
    spec = importlib.util.spec_from_file_location(name, osp.join(tools, f'{name}.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True)
def _seeded_generators():
    """Seed the global generators before every test. Without it a test that draws from
    them (a network's initialisation) sees a state left by whichever tests pytest-xdist
    happened to run before it in the same worker, and a result that holds for most
    draws but not all fails on one CI run in many."""
    import random

    import numpy as np
    random.seed(0)
    np.random.seed(0)
    try:
        import torch
        torch.manual_seed(0)
    except ImportError:  # pragma: no cover
        pass
    yield


@pytest.fixture(params=['cpp', 'torch'])
def fusion_backend(request):
    """Run the test once with the compiled CPU kernel (``'cpp'``: fails
    when it is not built) and once with the pure-torch path."""
    from mmens.ops import kernel
    with kernel.backend(request.param):
        yield request.param
