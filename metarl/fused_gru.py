"""GRU layers that read the same input sequence, run by one fused CPU kernel (RL²'s policy and value GRUs).

RL²'s PPO update (``metarl/algorithms/rl2.py``) runs its GRUs forward and backward over whole trials, 16
times an iteration. ``torch.nn.GRU`` on CPU spends most of that time outside its matrix products: ~10
element-wise kernels per step forward and ~20 more through autograd backward, each a pass over a
``[B, H]`` tensor, plus a weight-gradient product per step. The kernel of ``metarl/csrc/fused_gru.cpp``
does a step's gate arithmetic for every layer in one vectorised loop, back-propagates through time by
hand and forms each weight gradient as one product over all steps; the matrix products stay in BLAS.
Measured at RL²'s preset shape (two GRU-64 over 100 steps × 125 trials, one thread): forward + backward
~90 → ~55 CPU-ms (``experiments/rl2_report.md``, session 7).

The kernel computes PyTorch's GRU equations (``torch.nn.GRU``) with ``tanh(a) = 2σ(2a) − 1`` and glibc's
vector ``exp``: outputs and gradients equal ``nn.GRU``'s to float rounding (≤ 1e-6 absolute in single
precision, ≤ 1e-12 in double: ``tests/test_fused_gru.py``). It is compiled on first use with
``torch.utils.cpp_extension.load`` (a C++ compiler, the Python headers and ``ninja``; about a minute, once
per machine, cached in torch's extension directory). Where it cannot be built, or the tensors are not on
the CPU (CUDA runs ``nn.GRU``, i.e. cuDNN), :func:`gru_sequence` runs the ``nn.GRU`` modules themselves.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import torch
from torch import nn
from torch.autograd.function import once_differentiable

SOURCE = Path(__file__).parent / "csrc" / "fused_gru.cpp"
#: the build's name carries a hash of the source, so that checkouts of different versions keep separate builds
NAME = "metarl_fused_gru_" + hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]


def _flags() -> list[str]:
    """Compiler flags. ``-ffast-math`` lets GCC call glibc's vector ``exp`` (libmvec) in the gate loop; it
    is a compile flag only, so the shared object is not linked with ``crtfastmath.o`` and the process's
    floating-point state (denormals) is left alone (checked by the tests)."""
    flags = ["-O3", "-ffast-math", "-fopenmp-simd"]
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma"]
    return flags


@functools.cache
def _kernel() -> ModuleType | None:
    """The compiled extension, built on first use; ``None`` (with one warning) where it cannot be built."""
    from torch.utils import cpp_extension

    try:  # the `ninja` wheel (a dependency) puts its binary beside the interpreter; torch looks on PATH
        import ninja

        os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])
    except ImportError:
        pass
    try:  # a private helper of torch's: only for the message
        built = any(Path(cpp_extension._get_build_directory(NAME, verbose=False)).glob(f"{NAME}*.so"))
    except Exception:
        built = False
    if not built:
        print("metarl: building the fused GRU kernel (once per machine, about a minute)", file=sys.stderr)
    try:
        return cpp_extension.load(NAME, [str(SOURCE)], extra_cflags=_flags(), verbose=False)
    except Exception as exc:  # no compiler / headers / ninja: nn.GRU does the work
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        warnings.warn(f"metarl: fused GRU kernel unavailable, using torch.nn.GRU ({reason})", stacklevel=2)
        return None


def available() -> bool:
    """Whether the fused CPU kernel is built (building it if needed)."""
    return _kernel() is not None


class FusedGRU(torch.autograd.Function):
    """``G`` GRU layers on one input sequence: ``x [L, B, I]``, ``h0 [G, B, H]``, weights stacked over
    layers (``w_ih [G, 3H, I]``, ``w_hh [G, 3H, H]``, ``b_ih``/``b_hh [G, 3H]``) → ``[G, L, B, H]``."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        h0: torch.Tensor,
        w_ih: torch.Tensor,
        w_hh: torch.Tensor,
        b_ih: torch.Tensor,
        b_hh: torch.Tensor,
    ) -> torch.Tensor:
        kernel = _kernel()
        assert kernel is not None  # gru_sequence checks
        hs, gates = kernel.forward(x, h0, w_ih, w_hh, b_ih, b_hh)
        ctx.save_for_backward(x, hs, gates, w_ih, w_hh)
        return hs[:, 1:]

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, d_out: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        x, hs, gates, w_ih, w_hh = ctx.saved_tensors  # type: ignore[attr-defined]
        need_dx = ctx.needs_input_grad[0]  # type: ignore[attr-defined]
        dx, dh0, dw_ih, dw_hh, db_ih, db_hh = _kernel().backward(  # type: ignore[union-attr]
            d_out, x, hs, gates, w_ih, w_hh, need_dx
        )
        return (dx if need_dx else None), dh0, dw_ih, dw_hh, db_ih, db_hh


def _check(layers: Sequence[nn.GRU]) -> None:
    for layer in layers:
        if layer.num_layers != 1 or layer.bidirectional or not layer.bias or layer.batch_first:
            raise ValueError("gru_sequence: single-layer, unidirectional, time-major GRUs with biases only")
        if (layer.input_size, layer.hidden_size) != (layers[0].input_size, layers[0].hidden_size):
            raise ValueError("gru_sequence: every layer must have the same input and hidden sizes")


def gru_sequence(
    x: torch.Tensor, h0: torch.Tensor, layers: Sequence[nn.GRU], fused: bool = True
) -> torch.Tensor:
    """Run the GRU ``layers`` (each its own weights) on the same inputs ``x [L, B, I]`` from ``h0 [G, B, H]``
    (``G = len(layers)``); returns every layer's outputs, ``[G, L, B, H]`` (the last step is each layer's
    final state). ``fused`` and on the CPU: the fused kernel where it builds; otherwise the ``nn.GRU``
    modules, one after the other."""
    _check(layers)
    if fused and x.device.type == "cpu" and available():
        stacked = [
            torch.stack([getattr(layer, name) for layer in layers])
            for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
        ]
        return FusedGRU.apply(x, h0, *stacked)
    return torch.stack([layer(x, h0[g].unsqueeze(0))[0] for g, layer in enumerate(layers)])
