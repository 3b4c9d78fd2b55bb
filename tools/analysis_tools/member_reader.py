"""fuse_results' member files, decoded by two processes while the main one starts up.

A reader process, forked while ``fuse_results`` is still small (this module imports the
stdlib only), decodes the member files while the main process imports torch & co.:
seconds that the two would otherwise spend one after the other, on two cores. Once its
imports are done, the main process decodes the files that the reader has not started
(:meth:`MemberReader.steal`): the reader claims files from the first on, the main process
from the last (a shared array of claims), so that neither waits long for the other.

The validation, its errors included, stays in the main process (``load_member_batch``):
:meth:`MemberReader.read` raises a bad file's ``ValueError`` at that file's turn, so the
error is the one that a single process reading in order would raise.
"""
import importlib.util
import multiprocessing
import os.path as osp
import sys
import time
from typing import Dict, List, Sequence

READER, MAIN = 1, 2  # who claimed a file


def _coco_results():
    """``mmens.datasets.coco_results`` (numpy, msgspec, orjson), loaded from its file: as
    a submodule, importing it would first run ``mmens/__init__`` (torch, the very start-up
    that the reader overlaps)."""
    location = importlib.util.find_spec('mmens').submodule_search_locations[0]
    spec = importlib.util.spec_from_file_location(
        '_mmens_coco_results', osp.join(location, 'datasets', 'coco_results.py'))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _claim(claimed, index: int, who: int) -> bool:
    with claimed.get_lock():
        if claimed[index]:
            return False
        claimed[index] = who
        return True


def _read_members(conn, claimed, files: Sequence[str], names: Sequence[str]) -> None:
    """The reader process: the columns of the files it claims (from the first on, until
    one is the main process's), then one message per file.

    All its files are decoded before the first message, as the main process's imports go
    on meanwhile and would leave a message unread. A ``ValueError`` (a bad file) is sent as
    its message and ends the reading; anything else makes the main process read itself.
    """
    try:
        reader = _coco_results()
        out = []
        for i, (f, name) in enumerate(zip(files, names)):
            if not _claim(claimed, i, READER):
                break  # the main process took this file, and so the ones after it
            t0 = time.perf_counter()
            try:
                out.append(('columns', reader.read_results_columns(f, name),
                            time.perf_counter() - t0))
            except ValueError as e:
                out.append(('error', str(e), time.perf_counter() - t0))
                break  # the main process stops at the first bad file
    except Exception as e:  # noqa: BLE001 (anything unforeseen: the main process reads)
        out = [('failed', repr(e), 0.0)]
    for kind, value, seconds in out:
        if kind != 'columns':
            conn.send((kind, value, seconds))
            continue
        # the arrays' bytes as they are: pickling them would copy them once more each side
        conn.send((kind, [(a.dtype.str, a.shape) for a in value], seconds))
        for a in value:
            conn.send_bytes(a)
    conn.close()


class MemberReader:
    """The member files' columns, from a reader process and from this one.

    :meth:`read` has the signature of ``read_results_columns`` and is called in file order
    by ``load_member_batch``; it reads in this process when the reader failed or when asked
    for another file than the next one.

    Attributes:
        seconds (float): the reader process's own decoding seconds.
        stolen (list[int]): the files that this process decoded in :meth:`steal`.
    """

    def __init__(self, files: Sequence[str], names: Sequence[str]) -> None:
        self.files, self.names = list(files), list(names)
        self.seconds = 0.0
        self.stolen: List[int] = []
        self._own: Dict[int, object] = {}  # file index -> its columns, or its ValueError
        ctx = multiprocessing.get_context('fork')
        self._claimed = ctx.Array('b', len(self.files))  # 0, READER or MAIN
        self._conn, child = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_read_members,
                                 args=(child, self._claimed, self.files, self.names),
                                 daemon=True)
        self._proc.start()
        child.close()
        self._next = 0

    def steal(self) -> None:
        """Decode here the files that the reader has not started, from the last on."""
        from mmens.datasets.coco_results import read_results_columns
        for i in range(len(self.files) - 1, -1, -1):
            if self._conn is None or not _claim(self._claimed, i, MAIN):
                return  # the reader has this file and the ones before it
            try:
                self._own[i] = read_results_columns(self.files[i], self.names[i])
            except ValueError as e:  # raised at its turn: an earlier bad file comes first
                self._own[i] = e
            self.stolen.append(i)

    def read(self, path: str, name: str):
        from mmens.datasets.coco_results import read_results_columns
        i = self._next
        if i >= len(self.files) or (self.files[i], self.names[i]) != (path, name):
            self.close()
            self._own.clear()
            return read_results_columns(path, name)
        self._next += 1
        if i in self._own:
            value = self._own.pop(i)
            if isinstance(value, ValueError):
                self.close()
                raise value
            return value
        if self._conn is None:  # the reader failed before this file
            return read_results_columns(path, name)
        return self._receive(path, name)

    def _receive(self, path: str, name: str):
        from mmens.datasets.coco_results import read_results_columns
        try:
            kind, value, seconds = self._conn.recv()
            if kind == 'columns':
                import numpy as np  # imported by now
                value = tuple(np.empty(shape, dtype) for dtype, shape in value)
                for a in value:
                    self._conn.recv_bytes_into(a.reshape(-1))  # 1-D: its length in items
        except (EOFError, OSError):  # the reader died
            kind = 'failed'
        if kind == 'failed':
            self.close()
            return read_results_columns(path, name)
        self.seconds += seconds
        if kind == 'error':
            self.close()
            raise ValueError(value)
        return value

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
            self._proc.terminate()
            self._proc.join()
