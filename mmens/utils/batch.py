"""Helpers on mmengine's pseudo-collated batches that need no OpenMMLab import (the data
preprocessor of :mod:`mmens.models` and the full-batch loop of :mod:`mmens.engine` both
take batches apart with them)."""


def uncollate(x, i: int):
    """Sample ``i`` of a pseudo-collated structure (dicts of per-sample lists).

    Args:
        x (dict | Sequence): a per-sample sequence, or a dict (nested at any depth) of them.
        i (int): the sample.

    Returns:
        The ``i``-th item of every sequence, in the same dict structure.
    """
    if isinstance(x, dict):
        return {k: uncollate(v, i) for k, v in x.items()}
    return x[i]
