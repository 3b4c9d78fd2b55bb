"""mmens.utils.progress.Progress: log lines with an ETA, at most every ``every`` seconds."""
import io
from types import SimpleNamespace

from mmens.utils import progress
from mmens.utils.progress import Progress


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_line_per_step_with_the_eta_from_the_mean_step(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(progress, 'time', SimpleNamespace(perf_counter=clock))
    out = io.StringIO()  # not a terminal: log lines, no bar
    with Progress('fits', 4, stream=out) as p:
        clock.now += 30
        p.step('fold 0')
        clock.now += 60
        p.step()
    assert out.getvalue().splitlines() == [
        '  [1/4] fold 0 | 30 s elapsed, ETA 1 min 30 s',
        '  [2/4] fits | 1 min 30 s elapsed, ETA 1 min 30 s']


def test_every_limits_the_lines_and_keeps_the_last(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(progress, 'time', SimpleNamespace(perf_counter=clock))
    out = io.StringIO()
    with Progress('images', 1000, stream=out, every=10.0) as p:
        for _ in range(10):  # 100 images every 4 s: a line every third step, and the last
            clock.now += 4
            p.step(n=100)
    lines = out.getvalue().splitlines()
    assert [line.split(']')[0] for line in lines] == [
        '  [ 300/1000', '  [ 600/1000', '  [ 900/1000', '  [1000/1000']
    assert lines[0] == '  [ 300/1000] images | 12 s elapsed, ETA 28 s'
    assert lines[-1].endswith('40 s elapsed, ETA 0 s')
