"""What every launcher needs on the host: the output's allocation and memory format, the
accumulator dtype, the index width, and integer arithmetic that is cheaper than Triton's from
Python."""
import torch
import triton.language as tl


def output_format(like):
    """channels_last when `like` is (unambiguously) channels_last, as convolutions do."""
    if like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def new_output(like, size, dtype=None, memory_format=None):
    """An output for `like`'s kernels: same device, dtype and memory format unless given."""
    return torch.empty(
        size, dtype=dtype or like.dtype, device=like.device, memory_format=memory_format or output_format(like)
    )


def accumulator(t):
    """The dtype `t`'s values are accumulated in: float64 for float64, float32 otherwise."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def acc_dtype(t):
    """accumulator(t) as the kernels' ACC."""
    return {torch.float64: tl.float64, torch.float32: tl.float32}[accumulator(t)]


def index_dtype(*tensors):
    """int64 addressing only when some element lies past int32's reach. No element lies further
    from a tensor's start than its storage is long, so a storage of at most 2**31 elements settles
    it with one call; only a larger one gets the exact sum (which cost ~1 us a tensor per launch)."""
    for t in tensors:
        if (t.untyped_storage().nbytes() > 2**31 * t.element_size() and t.numel()
                and sum((n - 1) * abs(st) for n, st in zip(t.shape, t.stride())) >= 2**31):
            return tl.int64
    return tl.int32


# triton.next_power_of_2 and triton.cdiv are constexpr functions that cost ~3.5 us a call from
# Python (triton 3.6 and 3.9), and a launcher made up to ten such calls.
def pow2(n):
    """The smallest power of two >= n (n >= 1)."""
    return 1 << (n - 1).bit_length()


def cdiv(a, b):
    return -(-a // b)


def taps_padded(kernel_size):
    return pow2(kernel_size * kernel_size)
