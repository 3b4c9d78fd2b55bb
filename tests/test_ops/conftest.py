"""Fixtures of the ops tests."""
import pytest

from mmens.ops import kernel


@pytest.fixture(params=['cpp', 'torch'])
def fusion_backend(request):
    """Run the test once with the compiled CPU kernel (``'cpp'``: fails
    when it is not built) and once with the pure-torch path."""
    with kernel.backend(request.param):
        yield request.param
