import json
import os.path as osp

import numpy as np
import pytest

from mmens.datasets import load_member_predictions, validate_coco_results
from mmens.datasets.coco_results import _to_arrays, read_results_columns, write_results_json

SIZES = {1: (100, 50), 2: (200, 100)}
CATS = [1, 3, 18]


def entry(img=1, cat=1, bbox=(10, 10, 20, 10), score=0.5):
    return dict(image_id=img, category_id=cat, bbox=list(bbox), score=score)


def check(entries, match, **kw):
    with pytest.raises(ValueError, match=match) as e:
        validate_coco_results(entries, 'm1', SIZES, CATS, source='m1.json', **kw)
    assert "member 'm1'" in str(e.value)
    return str(e.value)


def test_valid_entries_are_converted_to_xyxy():
    p = validate_coco_results([entry(), entry(img=2, cat=18, bbox=(0, 0, 5, 5), score=1.0)],
                              'm1', SIZES, CATS)
    np.testing.assert_allclose(p.bboxes, [[10, 10, 30, 20], [0, 0, 5, 5]])
    assert p.category_ids.tolist() == [1, 18] and p.report == {}


@pytest.mark.parametrize('bad,match', [
    (entry(bbox=(np.nan, 1, 2, 2)), r"entry 1 \(image_id 1\).*'bbox'.*NaN"),
    (entry(bbox=(1, 1, np.inf, 2)), r"'bbox'.*inf"),
    (entry(score=float('nan')), r"'score'"),
    (entry(bbox=(10, 10, -3, 5)), r"negative width or height"),
    (entry(img=99), r"image_id 99.*'image_id' is not an image"),
    (entry(cat=2), r"'category_id' is not a category"),
    (entry(score=1.5), r"'score' is 1.5, outside \[0, 1\]"),
    (entry(score=-0.1), r"'score'.*outside"),
    (entry(bbox=(10, 10, 0, 5)), r"zero width or height"),
])
def test_bad_entries_raise_with_member_entry_and_field(bad, match):
    check([entry(), bad], match)


def test_missing_field_and_wrong_types():
    check([{'image_id': 1, 'bbox': [1, 1, 2, 2], 'score': 0.3}], r"entry 0.*missing field 'category_id'")
    check([entry(bbox=(1, 2, 3))], r"'bbox' must be \[x, y, w, h\]")
    check([entry(), 'oops'], r'entry 1 is a str')


def test_empty_member_is_an_error():
    check([], 'no predictions at all')


def test_out_of_image_boxes_are_clipped_and_counted():
    p = validate_coco_results([entry(bbox=(90, 40, 20, 20)), entry()], 'm1', SIZES, CATS)
    np.testing.assert_allclose(p.bboxes[0], [90, 40, 100, 50])
    assert p.report == {'clipped_to_image': 1}


def test_repair_mode_counts_everything_it_changes():
    entries = [entry(), entry(img=99), entry(score=1.2), entry(bbox=(np.nan, 0, 1, 1)),
               entry(bbox=(1, 1, 0, 3)), entry(cat=2), entry(bbox=(120, 0, 5, 5))]
    p = validate_coco_results(entries, 'm1', SIZES, CATS, repair=True)
    assert len(p) == 2  # the valid one and the clipped score
    assert p.report == {'dropped_unknown_image_id': 1, 'clipped_score': 1,
                        'dropped_nonfinite_bbox': 1, 'dropped_zero_size': 2,
                        'dropped_unknown_category_id': 1, 'clipped_to_image': 1}
    assert sum(v for k, v in p.report.items() if k.startswith('dropped')) + len(p) == 7


def test_file_errors(tmp_path):
    with pytest.raises(ValueError, match="member 'x'.*does not exist"):
        read_results_columns(str(tmp_path / 'x.json'))
    bad = tmp_path / 'trunc.json'
    bad.write_text(json.dumps([entry()])[:-5])
    with pytest.raises(ValueError, match="member 'trunc'.*not valid JSON"):
        load_member_predictions(str(bad), SIZES, CATS)
    obj = tmp_path / 'obj.json'
    obj.write_text('{"a": 1}')
    with pytest.raises(ValueError, match='must hold a JSON list'):
        read_results_columns(str(obj))


def test_real_member_files_are_valid():
    from conftest import DATA
    ann = json.load(open(osp.join(DATA, 'annotations', 'val.json')))
    sizes = {im['id']: (im['width'], im['height']) for im in ann['images']}
    cats = [c['id'] for c in ann['categories']]
    p = load_member_predictions(osp.join(DATA, 'predictions', 'val', 'nanodet-416.json'),
                                sizes, cats)
    assert len(p) == len(json.load(open(osp.join(DATA, 'predictions', 'val',
                                                 'nanodet-416.json'))))
    assert (p.bboxes[:, 2] > p.bboxes[:, 0]).all() and (p.scores <= 1).all()


def write(tmp_path, entries, name='m1'):
    path = tmp_path / f'{name}.json'
    path.write_text(json.dumps(entries))
    return str(path)


def test_typed_reading_equals_reading_entries(tmp_path):
    """The msgspec path (typed records) gives the columns of the untyped path: extra keys
    ignored, any key order, integers where floats are expected."""
    entries = [entry(), dict(score=0.25, bbox=[1, 2.5, 3, 4], id=7, category_id=18,
                             image_id=2, segmentation=[[1, 2, 3]])]
    got = read_results_columns(write(tmp_path, entries))
    want = _to_arrays(entries, 'm1', 'x')
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and np.array_equal(g, w)
    assert got[2].shape == (2, 4)


@pytest.mark.parametrize('field,value,match', [
    ('score', 'high', r"entry 1 \(image_id 2\): field 'score' must be a number, got 'high'"),
    ('score', True, r"entry 1 \(image_id 2\): field 'score' must be a number, got True"),
    ('category_id', None, r"entry 1 \(image_id 2\): field 'category_id' must be a number"),
    ('image_id', '2', r"entry 1: field 'image_id' must be a number, got '2'"),
    ('image_id', 2.5, r"entry 1: field 'image_id' must be an integer id, got 2.5"),
    ('image_id', 2**70, r"entry 1: field 'image_id' must be an integer id"),
    ('bbox', [1, 'a', 3, 4], r"entry 1 \(image_id 2\): field 'bbox' must hold 4 numbers"),
    ('bbox', [1, 2, 3], r"entry 1 \(image_id 2\): field 'bbox' must be \[x, y, w, h\]"),
])
def test_wrong_type_in_a_file_is_one_line_naming_member_entry_image_field(
        tmp_path, field, value, match):
    bad = entry(img=2)
    bad[field] = value
    path = write(tmp_path, [entry(), bad])
    with pytest.raises(ValueError, match=match) as e:
        load_member_predictions(path, SIZES, CATS)
    assert str(e.value).startswith(f"member 'm1' ({path}): ") and '\n' not in str(e.value)


def test_a_file_with_python_nan_and_integral_float_ids(tmp_path):
    """What msgspec refuses but stdlib json reads takes the untyped path: NaN (as
    ``json.dump`` writes it) is named as before; ``2.0`` is image 2, as before."""
    path = write(tmp_path, [entry(), entry(img=2.0, cat=18.0)])
    p = load_member_predictions(path, SIZES, CATS)
    assert p.image_ids.tolist() == [1, 2] and p.category_ids.tolist() == [1, 18]
    path = write(tmp_path, [entry(), entry(bbox=(1, float('nan'), 2, 2))])
    with pytest.raises(ValueError, match=r"entry 1 \(image_id 1\): field 'bbox' has a NaN"):
        load_member_predictions(path, SIZES, CATS)


@pytest.mark.parametrize('with_nan', [False, True])  # typed path / untyped path (NaN)
def test_a_file_validates_as_its_entries(tmp_path, with_nan):
    """load_member_predictions (columns) == validate_coco_results (entries), repairs too."""
    entries = [entry(), entry(img=99), entry(score=1.2), entry(bbox=(1, 1, 0, 3)),
               entry(cat=2), entry(bbox=(120, 0, 5, 5)), entry(img=2, bbox=(150, 80, 99, 99))]
    if with_nan:
        entries.append(entry(bbox=(np.nan, 0, 1, 1)))
    got = load_member_predictions(write(tmp_path, entries), SIZES, CATS, repair=True)
    want = validate_coco_results(entries, 'm1', SIZES, CATS, repair=True)
    assert got.report == want.report and len(got) == 3
    for k in ('image_ids', 'bboxes', 'scores', 'category_ids'):
        assert np.array_equal(getattr(got, k), getattr(want, k))


@pytest.mark.parametrize('n,chunk', [(0, 4), (1, 4), (9, 4), (8, 4), (1000, 7)])
def test_write_results_json_writes_what_json_dump_writes(tmp_path, n, chunk):
    rng = np.random.default_rng(n)
    img, cat = rng.integers(0, 10**9, n), rng.integers(1, 91, n)
    bbox, score = rng.uniform(0, 700, (n, 4)).round(3), rng.uniform(0, 1, n).round(6)
    if n:
        bbox[0], score[0] = [1e-5, 12.0, 3.25, 1e20], 1e-6
    path = str(tmp_path / 'out.json')
    write_results_json(path, img, cat, bbox, score, chunk=chunk)
    want = [dict(image_id=int(i), category_id=int(c), bbox=b.tolist(), score=float(s))
            for i, c, b, s in zip(img, cat, bbox, score)]
    got = json.load(open(path))
    assert got == want  # the same float64 values, not just close ones
    assert all(type(e['image_id']) is int and type(e['category_id']) is int for e in got)
