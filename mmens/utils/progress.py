"""Progress of long jobs with an ETA: a live bar on a terminal, log lines otherwise.

The one progress reporter of mmens and its tools (fits, AP evaluations, the benchmark's
output checks).
"""
import sys
import time
from typing import Optional


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f'{seconds // 60} min {seconds % 60:02d} s' if seconds >= 60 else f'{seconds} s'


class Progress:
    """``with Progress('fits', total) as p: ... p.step('fold 3')``.

    On a terminal, a rich progress bar (elapsed time and ETA). Otherwise (a CI log, a pipe),
    a line per step: ``[ 7/36] fold 3 | 45 s elapsed, ETA 1 min 10 s``, the ETA from the
    mean time per unit of work so far.

    Args:
        description (str): what is counted, shown on the bar and in lines without a name.
        total (int): units of work (steps, or e.g. images when a step does several).
        stream (file, optional): where to write (default ``sys.stdout``).
        every (float): log lines at most every ``every`` seconds (the last one is always
            written), for jobs of many quick steps; 0: one line per step.
    """

    def __init__(self, description: str, total: int, stream=None, every: float = 0.0) -> None:
        self.description, self.total, self.every = description, total, every
        self.stream = stream or sys.stdout
        self.done = 0
        self._bar = None

    def __enter__(self) -> 'Progress':
        self.start = self._last = time.perf_counter()
        if self.stream.isatty():
            from rich.progress import (BarColumn, MofNCompleteColumn, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)
            from rich.progress import Progress as Bar
            self._bar = Bar(TextColumn('  {task.description}'), BarColumn(),
                            MofNCompleteColumn(), TimeElapsedColumn(), TextColumn('ETA'),
                            TimeRemainingColumn())
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total)
        return self

    def step(self, what: Optional[str] = None, n: int = 1) -> None:
        """``n`` units of work done (``what``: a name for the log line)."""
        self.done += n
        if self._bar is not None:
            self._bar.advance(self._task, n)
            return
        now = time.perf_counter()
        if now - self._last < self.every and self.done < self.total:
            return
        self._last = now
        elapsed = now - self.start
        eta = elapsed / self.done * (self.total - self.done)
        width = len(str(self.total))
        print(f'  [{self.done:{width}d}/{self.total}] {what or self.description} | '
              f'{_duration(elapsed)} elapsed, ETA {_duration(eta)}', file=self.stream,
              flush=True)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
