"""lowbit's recurrent-net kernels: a dynamic int8 LSTM in C++ for any x86-64 with AVX2 + FMA.

One extension (``lstm_avx2.cpp``, built by ``python -m lowbit.kernels.build``), loaded lazily:

- ``rnn.lstm_layer``: one LSTM layer. The input projection of ALL time steps is one int8 GEMM
  (T * B rows); the time loop runs in C++: quantize h per row to 7 bits, int8 GEMM with W_hh
  (exact int32 dot products: activations offset to unsigned, vpmaddubsw + vpmaddwd, the offset
  removed with the weights' row sums), fp32 rescale + bias, gates in fp32.
- ``rnn.w8a8_gemm``: that GEMM alone (for tests and measurements).

Without the extension (not built, or a CPU without AVX2/FMA) ``reference.lstm_layer``
(rnn/reference.py) runs the same numerics in PyTorch. ``lstm_kernel`` names which one runs.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from lowbit.kernels.cpu import load_or_reason
from lowbit.kernels.cpu import missing_cpu_flags as _missing
from lowbit.kernels.rnn import reference

REQUIRED_CPU_FLAGS = ("avx2", "fma")


def missing_cpu_flags() -> list[str]:
    """The ISA extensions the recurrent kernels need that this CPU lacks."""
    return _missing(flags=REQUIRED_CPU_FLAGS)


@functools.cache
def extension_status() -> tuple[object | None, str]:
    """(extension module or None, why). Builds on first use; never raises."""
    return load_or_reason(missing_cpu_flags(), "load_rnn", "recurrent C++ extension",
                          "C++ extension built (AVX2 + FMA)")


def lstm_kernel(hidden_size: int, device: torch.device | str = "cpu") -> str:
    """Name of the kernel an LSTM layer of ``hidden_size`` runs on ``device``."""
    fits = hidden_size % 2 == 0  # the C++ GEMM takes output channels (4 * hidden) in blocks of 8
    if torch.device(device).type == "cpu" and fits and extension_status()[0] is not None:
        return "rnn.lstm_layer"
    return "reference.lstm_layer"


def why(hidden_size: int = 2, device: torch.device | str = "cpu") -> str:
    """Why ``lstm_kernel`` chose what it chose (for ``lowbit doctor``)."""
    if torch.device(device).type != "cpu":
        return f"no {torch.device(device).type} kernel: the reference runs"
    if hidden_size % 2:
        return f"hidden size {hidden_size} is odd: the reference runs"
    return extension_status()[1]


def pack_weight(q: torch.Tensor) -> torch.Tensor:
    """int8 [N, K] (N a multiple of 8) -> the C++ layout [N / 8, ceil(K / 4), 8, 4]: for each 8
    output channels, the quads w[n, k..k+3] side by side (K zero-padded to a multiple of 4)."""
    N, K = q.shape
    if N % 8:
        raise ValueError(f"pack_weight: output channels must be a multiple of 8, got {N}")
    padded = F.pad(q, (0, -K % 4))  # (N, K4)
    return padded.reshape(N // 8, 8, -1, 4).permute(0, 2, 1, 3).contiguous()  # (N/8, K4/4, 8, 4)


def lstm_layer(kernel: str, x, w_ih, s_ih, w_hh, s_hh, bias, h0, c0, packed=None):
    """Run one layer on ``kernel`` (from :func:`lstm_kernel`); ``packed`` = (pack_weight(w_ih),
    pack_weight(w_hh)) for the C++ kernel, computed here when not given."""
    if kernel == "reference.lstm_layer":
        return reference.lstm_layer(x, w_ih, s_ih, w_hh, s_hh, bias, h0, c0)
    module, reason = extension_status()
    if module is None:
        raise RuntimeError(f"lowbit.kernels.rnn: {kernel} is unavailable: {reason}")
    p_ih, p_hh = packed if packed is not None else (pack_weight(w_ih), pack_weight(w_hh))
    return module.lstm_layer(x.float().contiguous(), p_ih, s_ih, p_hh, s_hh, bias,
                             h0.float().contiguous(), c0.float().contiguous())
