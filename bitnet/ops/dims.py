"""``dim=`` / ``keepdim=`` (PyTorch) as aliases of ``axis=`` / ``keepdims=`` (NumPy).

Every reduction and axis-taking op accepts either spelling; passing both is a ``TypeError``.
"""
from __future__ import annotations


def resolve(name: str, axis=None, dim=None, keepdims=None, keepdim=None, default_axis=None):
    """``(axis, keepdims)`` from either spelling; ``default_axis`` when neither axis nor dim is given."""
    if axis is not None and dim is not None:
        raise TypeError(f"{name}: got both axis={axis!r} (NumPy's name) and dim={dim!r} (PyTorch's name) "
                        "for the same argument; pass only one of them")
    if keepdims is not None and keepdim is not None:
        raise TypeError(f"{name}: got both keepdims={keepdims!r} (NumPy's name) and keepdim={keepdim!r} "
                        "(PyTorch's name) for the same argument; pass only one of them")
    axis = dim if dim is not None else axis
    keep = keepdim if keepdim is not None else keepdims
    return (default_axis if axis is None else axis), bool(keep)
