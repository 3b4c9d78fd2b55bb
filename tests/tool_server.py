"""Run the repository's command-line tools in processes forked from one that has already
imported torch, mmengine, mmdet and mmens.

A tool's own work in the tests is small (a few images); importing those packages in a new
interpreter takes 5-7 s of each run, most of what a test of ``tools/train.py`` costs. This
server imports them once, then forks a child per run: the child has its own command line,
working directory, environment and stdout/stderr files, runs the script as ``__main__``
(as ``python SCRIPT ARGS`` does) and exits with its status. Nothing but imported modules
is shared, and importing mmens has no side effects (``tests/test_imports.py``).

What a new interpreter shows and a fork would not: text printed while the preloaded
packages import. The server records it and the client fails on any (``conftest.run_tool``),
so a child's stdout and stderr are what ``python SCRIPT ARGS`` prints, and a test of a
one-line error can run here. Tests of what a tool imports start a real interpreter.

Protocol, one JSON object per line: the test writes
``{"argv": [script, ...], "cwd": ..., "env": {...}, "stdout": path, "stderr": path}``;
the server answers ``{"pid": ...}`` at the fork, then ``{"status": ...}`` at its end.
Started by ``conftest.run_tool`` with ``OMP_NUM_THREADS`` set: OpenMP reads it when it
loads, before any child exists.
"""
import json
import os
import runpy
import sys


def preload() -> None:
    """What tools/train.py, tools/test.py and tools/analysis_tools/* import, on their way
    or while they run."""
    import matplotlib.pyplot  # noqa: F401  (the Θ and PR plots)
    import mmdet.datasets  # noqa: F401
    import mmdet.evaluation  # noqa: F401
    import mmdet.models  # noqa: F401
    import mmengine.runner  # noqa: F401
    import numba  # noqa: F401  (mmens.evaluation.fast_coco_ap's kernel)
    import torch._dynamo  # noqa: F401  (torch.optim's optimizers, when built)

    from mmens.utils import register_all_modules
    register_all_modules(init_default_scope=False)


def child(request: dict) -> None:
    """Become ``python SCRIPT ARGS`` and exit with its status (never returns)."""
    os.chdir(request['cwd'])
    os.environ.clear()
    os.environ.update(request['env'])
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, request['stdout']), (2, request['stderr'])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    script = request['argv'][0]
    sys.argv = list(request['argv'])
    sys.path[0] = os.path.dirname(os.path.abspath(script))  # as the interpreter sets it
    runpy.run_path(script, run_name='__main__')
    sys.exit(0)  # SystemExit from the tool (or an exception) ends the child the same way


def preload_printing() -> str:
    """:func:`preload`, and what it printed to stdout and stderr."""
    import tempfile
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile('w+') as printed:
        os.dup2(printed.fileno(), 1)
        os.dup2(printed.fileno(), 2)
        try:
            preload()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
        printed.seek(0)
        return printed.read()


def main() -> None:
    print(json.dumps({'ready': True, 'printed': preload_printing()}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            child(request)
        print(json.dumps({'pid': pid}), flush=True)
        status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        print(json.dumps({'status': status}), flush=True)


if __name__ == '__main__':
    main()
