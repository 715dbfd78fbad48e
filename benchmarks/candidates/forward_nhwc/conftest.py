from tests.kernels.conftest import kernel_device, launches  # noqa: F401
