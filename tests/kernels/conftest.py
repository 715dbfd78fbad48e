import pytest

from ..conftest import DEVICES, INTERPRETING


@pytest.fixture(params=DEVICES)
def kernel_device(request):
    """A device the Triton kernels run on: CUDA, or the CPU through Triton's interpreter."""
    if request.param == "cpu" and not INTERPRETING:
        pytest.skip("the Triton kernels run on CPU only with TRITON_INTERPRET=1 (the README's test command sets it)")
    return request.param


@pytest.fixture
def launches(monkeypatch):
    """launches(module, name): the list of grids that kernel `name` of `module` is launched with
    from then on, so a test can say which kernel its shape took (a block rule changed without its
    tests would otherwise leave a kernel untested while they still pass)."""
    def spy(module, name):
        kernel, grids = getattr(module, name), []

        class Spy:
            def __getitem__(self, grid):
                grids.append(grid)
                return kernel[grid]

        monkeypatch.setattr(module, name, Spy())
        return grids

    return spy
