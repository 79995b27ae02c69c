"""Channels-last feature maps between packed layers.

Between packed layers activations stay channels-last, as the kernels produce them, and carry their
signs already packed: a ``FeatureMap`` holds ``nhwc`` (float32 ``(N, H, W, C)``) and ``bits``
(``(N, H, W, 1, words_for(C))`` uint64, bit = value < 0, or None). It *is* a ``Tensor`` whose ``data``
is the ``(N, C, H, W)`` view of ``nhwc``, so any float layer can consume it unchanged; packed layers
read ``nhwc`` / ``bits`` directly (no transposition, no re-packing).
"""
from __future__ import annotations

import numpy as np

from bitnet.tensor import Tensor


class FeatureMap(Tensor):
    """An NCHW tensor backed by a channels-last array, with its packed signs; see the module docstring."""
    __slots__ = ("nhwc", "bits")

    @classmethod
    def of(cls, nhwc: np.ndarray, bits: np.ndarray | None = None) -> "FeatureMap":
        fm = cls(nhwc.transpose(0, 3, 1, 2))
        fm.nhwc, fm.bits = nhwc, bits
        return fm

    @classmethod
    def from_tensor(cls, x) -> "FeatureMap":
        """``x`` itself if it is a FeatureMap, else a channels-last copy of the NCHW tensor / array."""
        if isinstance(x, FeatureMap):
            return x
        data = x.data if isinstance(x, Tensor) else np.asarray(x)
        if data.ndim != 4:
            raise ValueError(f"expected a feature map (N, C, H, W), got shape {data.shape}")
        return cls.of(np.ascontiguousarray(data.transpose(0, 2, 3, 1), np.float32))
