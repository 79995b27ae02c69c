"""Keeping the ranks' models identical: broadcast at the start, buffers averaged, a check.

- ``broadcast_state(model, comm)``: every parameter and buffer takes rank 0's value (one broadcast per
  dtype, of all arrays packed into one flat buffer); first, the ranks compare their architectures
  (names, shapes, dtypes) and a mismatch names the ranks that differ.
- ``average_buffers(model, comm)``: float buffers (batch norm's running mean and variance) become the
  mean over the ranks, ``b <- (1/N) sum_r b_r``; integer buffers (batch counts) take rank 0's value.
  With per-rank batch norm statistics each rank's running averages follow its own shards; averaging
  them at the end of each epoch gives every rank (and the checkpoint) the same model. The running mean
  averaged this way is exactly the running average of the global batch means (the update is linear);
  the running variance is the mean of the ranks' variances, which leaves out the spread of the ranks'
  means (SyncBatchNorm computes the variance of the global batch instead).
- ``check_in_sync(model, comm, when)``: a digest of every parameter's bytes compared over the ranks;
  ``DistributedError`` naming the ranks whose weights differ from rank 0's.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np

from bitnet.distributed.faults import DistributedError


def _arrays(model):
    """[(name, array)] of every parameter (its ``.data``) and buffer, in state-dict order."""
    from bitnet.nn.module import Module
    if isinstance(model, Module):
        out = [(name, p.data) for name, p in model.named_parameters()]
        return out + [(name, b) for name, b in model.named_buffers() if isinstance(b, np.ndarray)]
    return [(str(i), p.data) for i, p in enumerate(model)]


def _digest(payload: bytes) -> np.ndarray:
    return np.frombuffer(hashlib.blake2b(payload, digest_size=8).digest(), np.int64).copy()


def _differing(comm, digest, what) -> list:
    gathered = comm.allgather(digest, what=what)
    return [r for r in range(comm.size) if gathered[r][0] != gathered[0][0]]


def _pack(arrays, comm):
    """{dtype: flat buffer} holding ``arrays`` back to back, and the layout to unpack it."""
    groups = {}
    for a in arrays:
        groups.setdefault(np.dtype(a.dtype).str, []).append(a)
    packed = {}
    for key, items in groups.items():
        buf = comm.empty(sum(a.size for a in items), np.dtype(key))
        offset = 0
        for a in items:
            buf[offset:offset + a.size] = a.reshape(-1)
            offset += a.size
        packed[key] = (buf, items)
    return packed


def _unpack(packed, scale=None):
    for buf, items in packed.values():
        offset = 0
        for a in items:
            part = buf[offset:offset + a.size].reshape(a.shape)
            if scale is not None:
                part = part * np.asarray(scale, dtype=a.dtype)
            a[...] = part
            offset += a.size


def broadcast_state(model, comm, root: int = 0) -> None:
    """Every parameter and buffer of ``model`` (a Module, or a list of parameters) takes rank ``root``'s
    value, in place (module docstring)."""
    if comm.size == 1:
        return
    arrays = _arrays(model)
    layout = json.dumps([(n, list(a.shape), a.dtype.str) for n, a in arrays]).encode()
    differ = _differing(comm, _digest(layout), "comparing the ranks' architectures")
    if differ:
        raise DistributedError(f"rank {comm.rank} of {comm.size}: the model of rank(s) "
                               f"{', '.join(map(str, differ))} has other parameters or buffers (names, shapes or "
                               "dtypes) than rank 0's: every rank must build the same model")
    for name, a in arrays:
        if not (a.flags.c_contiguous and a.flags.writeable):
            raise ValueError(f"broadcast_state: {name} is not a C-contiguous writable array")
    packed = _pack([a for _, a in arrays], comm)
    for key, (buf, _) in packed.items():
        comm.broadcast(buf, root, what=f"broadcasting the {np.dtype(key).name} weights of rank {root}")
    _unpack(packed)


def average_buffers(model, comm) -> None:
    """Float buffers of ``model`` become their mean over the ranks, integer buffers rank 0's (module
    docstring)."""
    if comm.size == 1:
        return
    buffers = [b for _, b in model.named_buffers() if isinstance(b, np.ndarray)]
    floats = [b for b in buffers if b.dtype.kind == "f"]
    others = [b for b in buffers if b.dtype.kind != "f"]
    if floats:
        packed = _pack(floats, comm)
        for key, (buf, _) in packed.items():
            comm.allreduce(buf, what="averaging the batch-norm statistics")
        _unpack(packed, scale=1.0 / comm.size)
    if others:
        packed = _pack(others, comm)
        for key, (buf, _) in packed.items():
            comm.broadcast(buf, 0, what="broadcasting the integer buffers")
        _unpack(packed)


def check_in_sync(model, comm, when: str) -> None:
    """Raise ``DistributedError`` if any rank's parameters differ (bitwise) from rank 0's."""
    if comm.size == 1:
        return
    h = hashlib.blake2b(digest_size=8)
    for _, a in _arrays(model):
        h.update(np.ascontiguousarray(a).tobytes())
    differ = _differing(comm, np.frombuffer(h.digest(), np.int64).copy(), f"comparing the weights {when}")
    if differ:
        raise DistributedError(f"rank {comm.rank} of {comm.size}: {when}, the weights of rank(s) "
                               f"{', '.join(map(str, differ))} differ from rank 0's, though every rank applies the "
                               "same averaged gradients: a rank changed its model on its own (code that runs on "
                               "some ranks only) or the MPI library's sums differ between ranks")
