"""fuse_results' member files, decoded by two processes while the main one starts up.

A reader process, forked while ``fuse_results`` is still small (this module imports the
stdlib only), decodes the member files while the main process imports torch & co.:
seconds that the two would otherwise spend one after the other, on two cores. Each file's
columns go to the main process as soon as they are decoded, in an anonymous shared memory
file (``memfd``) whose descriptor is sent over a socket: nothing is copied through a pipe,
and the reader never waits for the main process to read. The main process validates the
files in order as they come; when the next one is not decoded yet, it decodes the last
file that the reader has not started (:meth:`MemberReader.steal`): the reader claims files
from the first on, the main process from the last (a shared array of claims).

The validation, its errors included, stays in the main process (``load_member_batch``):
:meth:`MemberReader.read` raises a bad file's ``ValueError`` at that file's turn, so the
error is the one that a single process reading in order would raise.
"""
import importlib.util
import mmap
import multiprocessing
import os
import os.path as osp
import sys
import time
from multiprocessing.reduction import recv_handle, send_handle
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


def _share(conn, columns) -> None:
    """Send ``columns`` (C-contiguous arrays) as one memfd and their layout."""
    total = sum(a.nbytes for a in columns)
    fd = os.memfd_create('mmens-member-columns')
    try:
        os.ftruncate(fd, max(total, 1))
        with mmap.mmap(fd, max(total, 1)) as shared:
            offset = 0
            for a in columns:
                shared[offset:offset + a.nbytes] = memoryview(a).cast('B')
                offset += a.nbytes
        conn.send([(a.dtype.str, a.shape) for a in columns])
        send_handle(conn, fd, os.getppid())
    finally:
        os.close(fd)


def _read_members(conn, claimed, files: Sequence[str], names: Sequence[str]) -> None:
    """The reader process: decodes the files it claims, from the first on, until one is
    the main process's, and sends each at once (``('columns', seconds)`` then the layout
    and the memfd). A ``ValueError`` (a bad file) is sent as ``('error', message)`` and
    ends the reading; anything else as ``('failed', ...)``: the main process reads itself.
    """
    try:
        reader = _coco_results()
        for i, (f, name) in enumerate(zip(files, names)):
            if not _claim(claimed, i, READER):
                break  # the main process took this file, and so the ones after it
            t0 = time.perf_counter()
            try:
                columns = reader.read_results_columns(f, name)
            except ValueError as e:
                conn.send(('error', str(e)))
                break  # the main process stops at the first bad file
            conn.send(('columns', time.perf_counter() - t0))
            _share(conn, columns)
            del columns
    except Exception as e:  # noqa: BLE001 (anything unforeseen: the main process reads)
        conn.send(('failed', repr(e)))
    conn.close()


def _mapped(fd: int, layout: list) -> tuple:
    """The arrays of ``layout`` (dtype, shape) in the memfd ``fd``, without a copy."""
    import numpy as np  # imported by now
    sizes = [np.dtype(dtype).itemsize * int(np.prod(shape)) for dtype, shape in layout]
    try:
        shared = mmap.mmap(fd, max(sum(sizes), 1))
    finally:
        os.close(fd)  # the mapping keeps the memory
    out, offset = [], 0
    for (dtype, shape), size in zip(layout, sizes):
        out.append(np.frombuffer(shared, dtype, size // np.dtype(dtype).itemsize,
                                 offset).reshape(shape))
        offset += size
    return tuple(out)


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
        self._conn, child = ctx.Pipe(duplex=True)  # a socket pair: it carries descriptors
        self._proc = ctx.Process(target=_read_members,
                                 args=(child, self._claimed, self.files, self.names),
                                 daemon=True)
        self._proc.start()
        child.close()
        self._next = 0

    def steal(self) -> bool:
        """Decode here the last file that the reader has not started; False if none."""
        from mmens.datasets.coco_results import read_results_columns
        for i in range(len(self.files) - 1, self._next - 1, -1):
            if self._claimed[i] == MAIN:
                continue
            if self._conn is None or not _claim(self._claimed, i, MAIN):
                return False  # the reader has this file and the ones before it
            try:
                self._own[i] = read_results_columns(self.files[i], self.names[i])
            except ValueError as e:  # raised at its turn: an earlier bad file comes first
                self._own[i] = e
            self.stolen.append(i)
            return True
        return False

    def read(self, path: str, name: str):
        from mmens.datasets.coco_results import read_results_columns
        i = self._next
        if i >= len(self.files) or (self.files[i], self.names[i]) != (path, name):
            self.close()
            self._own.clear()
            return read_results_columns(path, name)
        self._next += 1
        while True:
            if i in self._own:
                value = self._own.pop(i)
                if isinstance(value, ValueError):
                    self.close()
                    raise value
                return value
            if self._conn is None:  # the reader failed before this file
                return read_results_columns(path, name)
            # while the reader decodes file i, decode one of the last files here
            if self._conn.poll() or not self.steal():
                return self._receive(path, name)

    def _receive(self, path: str, name: str):
        from mmens.datasets.coco_results import read_results_columns
        try:
            message = self._conn.recv()
            if message[0] == 'columns':
                layout = self._conn.recv()
                value = _mapped(recv_handle(self._conn), layout)
        except (EOFError, OSError):  # the reader died
            message = ('failed', )
        if message[0] == 'failed':
            self.close()
            return read_results_columns(path, name)
        if message[0] == 'error':
            self.close()
            raise ValueError(message[1])
        self.seconds += message[1]
        return value

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
            self._proc.terminate()
            self._proc.join()
