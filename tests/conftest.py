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


class _ToolServer:
    """The client of ``tests/tool_server.py``: one per test process, started at first
    use, stopped at exit."""

    def __init__(self):
        import subprocess
        self.proc = subprocess.Popen(
            [sys.executable, osp.join(ROOT, 'tests', 'tool_server.py')], cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1'),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = self._answer(300)
        assert ready is not None, 'tests/tool_server.py: not ready after 300 s'
        # a new interpreter would print this before each tool's own output
        assert ready['printed'] == '', f"importing printed: {ready['printed'][-2000:]}"

    def _answer(self, timeout):
        import json
        import select
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            return None
        line = self.proc.stdout.readline()
        assert line, f'tests/tool_server.py exited with {self.proc.wait()}'
        return json.loads(line)

    def run(self, argv, cwd, env, stdout, stderr, timeout):
        import json
        import signal
        request = dict(argv=argv, cwd=cwd, env=env, stdout=stdout, stderr=stderr)
        self.proc.stdin.write(json.dumps(request) + '\n')
        self.proc.stdin.flush()
        forked = self._answer(60)
        assert forked is not None, 'tests/tool_server.py: no fork after 60 s'
        pid = forked['pid']
        answer = self._answer(timeout)
        if answer is None:  # a hung tool: end it, then fail the test
            os.kill(pid, signal.SIGKILL)
            self._answer(60)
            pytest.fail(f'{argv[0]} ran over {timeout} s')
        return answer['status']

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(60)


_tool_server = None


def run_tool(script, *args, timeout=600):
    """``python SCRIPT ARGS`` in ROOT, from a process that has imported torch, mmengine,
    mmdet and mmens already (``tests/tool_server.py``): (exit status, stdout, stderr). The
    child has this process' environment; a variable read while those packages import
    would not apply, so a test that sets one starts a real interpreter."""
    import atexit
    import tempfile
    global _tool_server
    if _tool_server is None:
        _tool_server = _ToolServer()
        atexit.register(_tool_server.close)
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    with tempfile.TemporaryDirectory() as tmp:
        out, err = osp.join(tmp, 'stdout'), osp.join(tmp, 'stderr')
        status = _tool_server.run([script, *map(str, args)], ROOT, env, out, err, timeout)
        return status, open(out).read(), open(err).read()


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
