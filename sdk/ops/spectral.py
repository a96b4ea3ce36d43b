"""dft: ONNX DFT (opsets 17 and 20) along one axis of a real (``[..., 1]``) or complex (``[..., 2]``: real,
imaginary) signal.

``attrs``: ``axis`` (normalized, a signal axis), ``length`` (the transform length: the signal is cut or
zero-padded to it, as ``numpy.fft``'s ``n``), ``inverse`` (divide by the length, opposite sign) and
``onesided`` (forward: only the first ``length // 2 + 1`` bins; inverse: the input is that half spectrum of a
real signal, the result real, ``[..., 1]``, as ``numpy.fft.irfft``). ONNX STFT is imported as frames
(a gather), the window (a product) and this DFT. mel_weight_matrix (ONNX MelWeightMatrix) is computed at
import from its constant inputs. Lowered as the direct O(n^2) sum per
output bin; cos and sin are taken of the angle reduced to its quarter turn, so multiples of a quarter
turn are exact (a bin that is 0 in exact arithmetic stays 0) and large bins stay accurate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..ir.types import TensorType, np_dtype
from . import script
from .base import OpError, register
from .shape_compute import _ImportOnly


def _out_len(length: int, inverse: int, onesided: int) -> int:
    return length // 2 + 1 if onesided and not inverse else length


def _infer(x: TensorType, *, axis: int, length: int, inverse: int = 0, onesided: int = 0) -> TensorType:
    if x.ndim < 2 or x.shape[-1] not in (1, 2):
        raise OpError(f"dft: expects a signal [..., 1] (real) or [..., 2] (complex), got {x}")
    if not 0 <= axis < x.ndim - 1:
        raise OpError(f"dft: axis {axis} is not a signal axis of {x} (the last axis holds real, imaginary)")
    if length < 1:
        raise OpError(f"dft: the transform length must be positive, got {length}")
    if not x.dtype.startswith("float"):
        raise OpError(f"dft: expects a float signal, got {x.dtype}")
    shape = list(x.shape)
    shape[axis] = _out_len(length, inverse, onesided)
    shape[-1] = 1 if inverse and onesided else 2
    return TensorType(tuple(shape), x.dtype)


def _reference(x: np.ndarray, *, axis: int, length: int, inverse: int = 0, onesided: int = 0) -> np.ndarray:
    sig = x[..., 0] + (1j * x[..., 1] if x.shape[-1] == 2 else 0)
    if inverse and onesided:
        return np.fft.irfft(sig, n=length, axis=axis)[..., None].astype(x.dtype)
    y = (np.fft.ifft if inverse else np.fft.fft)(sig, n=length, axis=axis)
    if onesided:
        y = np.take(y, np.arange(length // 2 + 1), axis=axis)
    return np.stack([y.real, y.imag], axis=-1).astype(x.dtype)


def _split(shape: tuple[int, ...], axis: int) -> tuple[int, int, int]:
    return (
        int(np.prod(shape[:axis], dtype=np.int64)),
        int(shape[axis]),
        int(np.prod(shape[axis + 1 : -1], dtype=np.int64)),
    )


@script.operator("dft", infer=_infer, reference=_reference, flops_per_element=0)
def dft(x, out, *, axis, length, inverse=0, onesided=0):  # type: ignore[no-untyped-def]
    outer, n_in, inner = _split(x.shape, axis)
    n_out = out.shape[axis]
    c_in = x.shape[-1]
    c_out = out.shape[-1]
    xs = x.with_(shape=(outer, n_in, inner, c_in), strides=())
    ys = out.with_(shape=(outer, n_out, inner, c_out), strides=())
    real_out = inverse and onesided  # irfft: the input holds bins 0 .. length // 2 of a real signal
    taps = min(n_in, length // 2 + 1) if real_out else min(n_in, length)
    sign = 1.0 if inverse else -1.0
    scale = 1.0 / length if inverse else 1.0
    quarter = 0.5 * math.pi / length
    for o, k, e in script.grid(outer, n_out, inner):
        re = 0.0
        im = 0.0
        for t in range(taps):
            m4 = 4 * ((k * t) % length)  # the angle is (m4 / length) quarter turns: quadrant q, then the rest
            q = m4 // length
            th = quarter * script.cast("float32", m4 % length)
            cr = script.cos(th)
            sr = script.sin(th)
            c = script.select(q == 0, cr, script.select(q == 1, -sr, script.select(q == 2, -cr, sr)))
            s = sign * script.select(q == 0, sr, script.select(q == 1, cr, script.select(q == 2, -sr, -cr)))
            xr = script.cast("float32", xs[o, t, e, 0])
            xi = script.cast("float32", xs[o, t, e, 1]) if c_in == 2 else 0.0
            if real_out:  # bins 1 .. (length - 1) // 2 stand for two (k and length - k)
                w = script.select(t == 0 or 2 * t == length, 1.0, 2.0)
                re = re + w * (xr * c - xi * s)
            else:
                re = re + (xr * c - xi * s)
                im = im + (xr * s + xi * c)
        ys[o, k, e, 0] = script.cast(out.dtype, re * scale)
        if c_out == 2:
            ys[o, k, e, 1] = script.cast(out.dtype, im * scale)


class MelWeightMatrix(_ImportOnly):
    """ONNX MelWeightMatrix: the ``[dft_length // 2 + 1, num_mel_bins]`` matrix of triangular mel filters
    (peak 1) between ``lower_edge_hertz`` and ``upper_edge_hertz``; five scalar inputs (num_mel_bins,
    dft_length, sample_rate, lower and upper edge), ``attrs["dtype"]`` the result's. Computed at import."""

    name = "mel_weight_matrix"

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        raise self.error("its size depends on its input values: it needs constant inputs")

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        bins, length, rate = (int(np.asarray(v).reshape(())) for v in inputs[:3])
        lower, upper = (float(np.asarray(v).reshape(())) for v in inputs[3:])
        mel_lo, mel_hi = (2595 * np.log10(1 + f / 700) for f in (lower, upper))
        mels = np.arange(bins + 2) * ((mel_hi - mel_lo) / (bins + 2)) + mel_lo
        edges = (((length + 1) * (700 * (10 ** (mels / 2595) - 1))) // rate).astype(int)
        out = np.zeros((length // 2 + 1, bins))
        for i in range(bins):
            lo, mid, hi = edges[i : i + 3]
            if mid == lo:
                out[mid, i] = 1
            else:
                out[lo : mid + 1, i] = (np.arange(lo, mid + 1) - lo) / (mid - lo)
            if hi > mid:
                out[mid:hi, i] = (hi - np.arange(mid, hi)) / (hi - mid)
        return [out.astype(np_dtype(str(attrs.get("dtype", "float32"))))]


register(MelWeightMatrix())
