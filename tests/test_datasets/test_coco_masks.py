"""read_member_masks: the three forms of ``segmentation`` give pycocotools' masks."""
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from mmens.datasets.coco_masks import file_has_masks, read_member_masks


def test_rle_text_uncompressed_rle_and_polygons(tmp_path):
    h, w = 9, 7
    rng = np.random.RandomState(0)
    m = rng.rand(h, w) > 0.6
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    flat = m.T.ravel()  # column-major
    change = np.flatnonzero(np.diff(np.concatenate(([0], flat, [1 - flat[-1]]))))
    counts = np.diff(np.concatenate(([0], change))).tolist()  # zeros first
    poly = [[1, 1, 5, 1, 5, 6, 1, 6]]
    entries = [dict(image_id=3, segmentation=dict(size=[h, w], counts=rle['counts'].decode())),
               dict(image_id=3, segmentation=dict(size=[h, w], counts=counts)),
               dict(image_id=3, segmentation=poly)]
    path = tmp_path / 'a.json'
    path.write_text(json.dumps(entries))
    assert file_has_masks(str(path))
    runs = read_member_masks(str(path), 'a', {3: (w, h)}, np.array([3, 3, 3]))
    want = [m, m, mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(poly, h, w)))]
    for j, mask in enumerate(want):
        got = np.zeros(h * w, bool)
        for s, e in zip(runs.starts[runs.offsets[j]:runs.offsets[j + 1]].tolist(),
                        runs.ends[runs.offsets[j]:runs.offsets[j + 1]].tolist()):
            got[s:e] = True
        assert (got.reshape(w, h).T == mask.astype(bool)).all(), j
    with pytest.raises(ValueError, match=r"entry 1 \(image_id 3\): field 'segmentation' has "
                                         r"size \[9, 8\]"):
        entries[1]['segmentation']['size'] = [9, 8]
        path.write_text(json.dumps(entries))
        read_member_masks(str(path), 'a', {3: (w, h)}, np.array([3, 3, 3]))
