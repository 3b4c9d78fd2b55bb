"""The parts of ``tools/analysis_tools/benchmark_fusion.py``, one idea each.

* :mod:`.methods`: the fusion functions timed (ensemble-boxes and mmens' two APIs) and
  the mmens.ops backend they run on;
* :mod:`.loads`: the seeded COCO-like loads and their packed / device forms;
* :mod:`.timing`: timing and peak memory of one method on one load (:class:`.Case`);
* :mod:`.check`: mmens' outputs compared with ensemble-boxes', image by image;
* :mod:`.report`: the console lines and the Markdown tables of docs/benchmarks.md.
"""
