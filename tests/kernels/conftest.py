import pytest

from ..conftest import DEVICES, INTERPRETING


@pytest.fixture(params=DEVICES)
def kernel_device(request):
    """A device the Triton kernels run on: CUDA, or the CPU through Triton's interpreter."""
    if request.param == "cpu" and not INTERPRETING:
        pytest.skip("the Triton kernels run on CPU only with TRITON_INTERPRET=1 (the README's test command sets it)")
    return request.param
