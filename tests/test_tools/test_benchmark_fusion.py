"""tools/analysis_tools/benchmark_fusion.py and its parts (tools/analysis_tools/benchmark/):
its check catches wrong outputs, its loads nest, and a small run reports every section."""
import numpy as np
import pytest

from conftest import load_tool

pytest.importorskip('ensemble_boxes')


def _tool():
    return load_tool('benchmark_fusion')  # also puts tools/analysis_tools on sys.path


def _parts():
    _tool()
    from benchmark import check, loads, methods, timing
    return check, loads, methods, timing


def test_a_load_starts_with_the_smaller_load():
    # the COCO-sized check reuses the main load's ensemble-boxes outputs
    loads = _parts()[1]
    small = loads.make_load(3, 2, 10, 5, 3, seed=1)
    big = loads.make_load(7, 2, 10, 5, 3, seed=1)
    for a, b in zip(small, big[:3]):
        for xs, ys in zip(a, b):
            assert all(np.array_equal(x, y) for x, y in zip(xs, ys))


def test_same_ignores_order_only_within_tied_scores():
    bf = _parts()[0]
    b = np.array([[0, 0, .5, .5], [.1, .1, .6, .6], [.2, .2, .7, .7]])
    s, lab = np.array([.9, .5, .5]), np.array([1, 2, 3])
    ref = (b, s, lab)
    assert bf.same(ref, (b[[0, 2, 1]], s[[0, 2, 1]], lab[[0, 2, 1]]))  # tie
    assert not bf.same(ref, (b[[1, 0, 2]], s[[1, 0, 2]], lab[[1, 0, 2]]))
    assert not bf.same(ref, (b + 1e-4, s, lab))
    assert not bf.same(ref, (b[:2], s[:2], lab[:2]))
    # the packed API returns by score what ensemble-boxes' NMS returns by label
    by_label = (b[[1, 0, 2]], s[[1, 0, 2]], lab[[1, 0, 2]])
    assert not bf.same(by_label, ref)
    assert bf.same(by_label, ref, by_score=True)
    assert not bf.same(by_label, (b + 1e-4, s, lab), by_score=True)


@pytest.mark.parametrize('workers', [1, 2])
def test_check_names_the_images_that_differ(workers):
    check, loads, methods, timing = _parts()
    load = loads.make_load(40, 3, 20, 5, 3, seed=0)
    ref_fn = methods.fusion('wbf').reference
    known = [ref_fn(img) for img in load[:5]]  # the rest is run by check()
    good = [ref_fn(img) for img in load]
    wrong = list(good)
    for i in (2, 31):  # one in the known part, one in the workers' part
        b, s, lab = wrong[i]
        wrong[i] = (b, s * 0.5, lab)
    args = _tool().parse_args(['--workers', str(workers)])
    case = timing.Case('wbf', 20, len(load), 5)
    check.check(case, load, known, {'good': good, 'wrong': wrong}, args)
    assert case.checked == 40 and case.equal == 38
    assert case.bad == {'wrong': [2, 31]}


def test_small_run_reports_every_section(capsys):
    bf = _tool()
    bf.main(['--images', '6', '--sizes', '30', '--size-images', '4', '--ref-images', '2',
             '--coco-images', '30', '--methods', 'wbf', 'nms', 'nmw', '--repeat', '1',
             '--threads', '1', '2'])
    out = capsys.readouterr().out
    assert 'outputs equal 6/6 images' in out  # main load
    assert 'outputs equal 4/4 images' in out  # 30 boxes per member
    assert 'outputs equal 30/30 images' in out  # the "COCO-sized" load
    assert 'target' not in out  # results, not targets (docs/benchmarks.md is pasted from it)
    assert '| WBF | 30 | 4 (ensemble-boxes timed on 2) |' in out
    assert '| method | list API, 1 thread, s | list API, 2 threads, s |' in out
    assert 'Command: `python tools/analysis_tools/benchmark_fusion.py --images 6' in out
    assert out.rstrip().endswith('all outputs equal')


def test_rejects_bad_arguments():
    bf = _tool()
    with pytest.raises(SystemExit):
        bf.parse_args(['--sizes', '300', '1000', '--size-images', '1', '2', '3'])
    with pytest.raises(SystemExit):
        bf.parse_args(['--images', '0'])


def test_cpu_clock_at_one_thread_only(capsys):
    bf = _tool()
    for bad in (['--clock', 'cpu'], ['--clock', 'cpu', '--threads', '1', '2']):
        with pytest.raises(SystemExit):
            bf.parse_args(bad)
    _, timing = _parts()[2:]
    try:
        bf.main(['--images', '4', '--sizes', '--coco-images', '0', '--methods', 'wbf',
                 '--repeat', '1', '--threads', '1', '--clock', 'cpu'])
        assert timing._clock['now'] is timing.CLOCKS['cpu']
    finally:
        timing.set_clock('wall')
    out = capsys.readouterr().out
    assert "times are the process' CPU time (--clock cpu)" in out
    assert out.rstrip().endswith('all outputs equal')
