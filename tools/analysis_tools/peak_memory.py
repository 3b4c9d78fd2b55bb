"""Wall time and peak memory of a command's whole process tree (Linux ``/proc``).

``/usr/bin/time -v`` reports the largest single process; a command that forks workers
holds more. This samples the tree every ``--interval`` seconds and reports the peaks of
the tree's memory: the RSS of the command plus the private pages of its descendants (a
page that forked workers share with the command, e.g. the columns and torch's libraries,
counted once). It also reports the peak of the sum of RSS (shared pages counted once per
process: an upper bound) and the largest single process (what ``time -v`` reports)::

    python tools/analysis_tools/peak_memory.py -- python tools/analysis_tools/fuse_results.py \\
        --ann A.json --preds P/*.json --method wbf --no-eval --out fused.json --workers 2

The last line: ``wall S s, cpu C s, peak tree memory X GB, peak sum of RSS Y GB, largest
process Z GB (N processes), load L`` (``C``: user + system seconds of the tree; ``L``: the
1-minute load average at the start).
"""
import argparse
import os
import resource
import subprocess
import sys
import time
from typing import Dict, List


def children_of() -> Dict[int, List[int]]:
    """``pid -> child pids`` of every process visible in /proc."""
    tree: Dict[int, List[int]] = {}
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/stat', 'rb') as f:
                stat = f.read()
        except OSError:  # gone meanwhile
            continue
        ppid = int(stat[stat.rindex(b')') + 2:].split()[1])  # the name may hold spaces
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def tree_memory(root: int) -> tuple:
    """``(root's RSS + the others' private pages, sum of RSS, largest RSS, processes)`` of
    ``root``'s tree, in bytes."""
    tree, todo, mem, rss, largest, n = children_of(), [root], 0, 0, 0, 0
    while todo:
        pid = todo.pop()
        todo += tree.get(pid, [])
        try:
            with open(f'/proc/{pid}/smaps_rollup', 'rb') as f:
                fields = dict(line.split(b':', 1) for line in f.read().splitlines()[1:])
        except (OSError, ValueError):
            continue
        kb = {k: int(v.split()[0]) * 1024 for k, v in fields.items() if v.strip()}
        own = kb.get(b'Rss', 0) if pid == root else (kb.get(b'Private_Clean', 0) +
                                                     kb.get(b'Private_Dirty', 0))
        mem, rss, n = mem + own, rss + kb.get(b'Rss', 0), n + 1
        largest = max(largest, kb.get(b'Rss', 0))
    return mem, rss, largest, n


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--interval', type=float, default=0.05, help='seconds between samples')
    p.add_argument('command', nargs=argparse.REMAINDER, help='-- then the command')
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ['--'] else args.command
    if not command:
        raise SystemExit('error: give the command to measure after --')
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(command)
    peak = [0, 0, 0, 0]
    while proc.poll() is None:
        peak = [max(a, b) for a, b in zip(peak, tree_memory(proc.pid))]
        time.sleep(args.interval)
    wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    largest = max(peak[2], usage.ru_maxrss * 1024)
    print(f'wall {wall:.2f} s, cpu {usage.ru_utime + usage.ru_stime:.2f} s, peak tree memory '
          f'{peak[0] / 1e9:.2f} GB, peak sum of RSS {peak[1] / 1e9:.2f} GB, largest process '
          f'{largest / 1e9:.2f} GB ({peak[3]} processes), load {load:.2f}', file=sys.stderr)
    sys.exit(proc.returncode)


if __name__ == '__main__':
    main()
