"""The extension's cache of large buffers (mmens/ops/csrc/pool.h): a freed
buffer is handed out again, a buffer in use never is, and calls from several
threads or a forked child give the outputs of lone calls."""
import os
import resource
import threading

import numpy as np
import pytest
import torch

import mmens.ops as mo
from mmens.ops import kernel
from mmens.ops.listapi import pack_images

pytestmark = pytest.mark.skipif(not kernel.kernel_available(),
                                reason='the compiled kernel is not built')


def _images(seed: int, num_images: int = 12, members: int = 3,
            boxes: int = 100) -> list:
    """Member lists of ``num_images * members * boxes`` boxes (3,600 by
    default: the packed boxes take 115 KB, above the pool's 64 KiB)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(num_images):
        bl, sl, ll = [], [], []
        for _ in range(members):
            xy = rng.uniform(0, 0.7, (boxes, 2))
            bl.append(np.concatenate([xy, xy + rng.uniform(0.05, 0.3,
                                                           (boxes, 2))], 1))
            sl.append(rng.uniform(0, 1, boxes))
            ll.append(rng.integers(0, 3, boxes))
        images.append((bl, sl, ll))
    return images


def _copy(result: list) -> list:
    return [tuple(x.copy() for x in img) for img in result]


def _equal(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        all(np.array_equal(x, y) for x, y in zip(p, q)) for p, q in zip(a, b))


def test_freed_buffer_is_reused_and_held_one_is_not():
    images = _images(0)
    first = kernel._ext.pack_lists(images)
    ptr = first[0].data_ptr()
    second = kernel._ext.pack_lists(images)
    assert second[0].data_ptr() != ptr  # first[0] is still in use
    assert torch.equal(second[0], first[0])
    del first
    third = kernel._ext.pack_lists(images)
    assert third[0].data_ptr() == ptr  # the freed buffer, no fresh pages
    assert torch.equal(third[0], second[0])


def test_freed_buffers_are_not_faulted_in_again():
    # 1.1 M boxes: the packed boxes (35 MB) are above glibc's largest mmap
    # threshold (32 MiB), so without the pool every call maps them afresh
    # and faults in its 8,600 pages; the pool keeps them (and all but the
    # oldest freed of the other fields, within its 64 MiB)
    rng = np.random.default_rng(6)
    n = 275_000
    xy = rng.uniform(0, 0.5, (n, 2))
    b = np.concatenate([xy, xy + 0.25], 1)
    s = rng.uniform(0, 1, n)
    lab = rng.integers(0, 80, n)
    images = [([b] * 4, [s] * 4, [lab] * 4)]
    for _ in range(2):
        kernel._ext.pack_lists(images)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    kernel._ext.pack_lists(images)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 4 * n * 32 // 4096 // 2


def test_results_survive_later_calls():
    a, b = _images(1), _images(2)
    ra = mo.weighted_boxes_fusion_batch(a)
    keep = _copy(ra)
    for _ in range(3):  # the buffers freed in between go to later calls
        mo.weighted_boxes_fusion_batch(b)
        mo.nms_batch(b)
    assert _equal(ra, keep)
    packed = mo.weighted_boxes_fusion_packed(pack_images(a).dets)
    saved = [t.clone() for t in packed]
    mo.weighted_boxes_fusion_batch(b)
    assert all(torch.equal(t, s) for t, s in zip(packed, saved))


def test_threads_get_the_outputs_of_lone_calls():
    loads = [_images(s) for s in (3, 4)]
    want = [_copy(mo.weighted_boxes_fusion_batch(x)) for x in loads]
    got = [[], []]

    def run(i):
        for _ in range(4):
            got[i].append(_copy(mo.weighted_boxes_fusion_batch(loads[i])))

    threads = [threading.Thread(target=run, args=(i, )) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(_equal(r, want[i]) for i in (0, 1) for r in got[i])


@pytest.mark.skipif(not hasattr(os, 'fork'), reason='no fork')
def test_forked_child_gets_the_outputs_of_a_lone_call():
    images = _images(5)
    want = _copy(mo.weighted_boxes_fusion_batch(images))
    pid = os.fork()
    if pid == 0:  # child: no pytest machinery, only an exit code
        code = 1
        try:
            # one thread, as fuse_results' workers: OpenMP's thread pool
            # does not survive a fork
            torch.set_num_threads(1)
            code = 0 if _equal(mo.weighted_boxes_fusion_batch(images),
                               want) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
