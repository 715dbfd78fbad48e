"""The suite's fixtures for the candidate's tests (tests/conftest.py, tests/kernels/conftest.py), and
the candidate's own buffers poisoned as the suite poisons main's launchers' buffers."""
import pytest

from tests.conftest import poisoned_outputs, seed  # noqa: F401 (autouse: main's launchers' buffers start as NaN)
from tests.kernels.conftest import kernel_device, launches  # noqa: F401

from . import backward


@pytest.fixture(autouse=True)
def poisoned_candidate_outputs(monkeypatch):
    """Every buffer the candidate's launchers allocate starts as NaN (an index buffer as -1, which
    index_add_ refuses), so an element no kernel writes fails the comparison."""
    allocate = backward.new_output

    def poisoned(like, size, dtype=None, memory_format=None):
        out = allocate(like, size, dtype, memory_format)
        return out.fill_(float("nan") if out.is_floating_point() else -1)

    monkeypatch.setattr(backward, "new_output", poisoned)
