"""One update for many parameters on a device: an optimizer's elementwise step run once over the
concatenation of its parameters (a "multi-tensor" update), so that a step on "cuda" launches a
handful of kernels per parameter group instead of about a dozen per parameter.

For a bucket of parameters p_1 .. p_n on "cuda" with gradients g_i (one dtype, the same scalar state,
e.g. Adam's step count t, the same names of array state), sizes s_i and offsets
o_i = s_1 + ... + s_(i-1)::

    P   = concat(ravel(p_1), ..., ravel(p_n))          one kernel (bitnet.kernels.cuda_flat, from a table of
                                                       the parameters' addresses kept while they stay)
    G   = concat(ravel(g_1), ..., ravel(g_n))          one gather (CuPy: one kernel for > 8 small arrays)
    S_k = concat(ravel(state_1[k]), ...)               for each array state k (kept between steps)
    optimizer._update(P, G, {k: S_k, scalars}, group)  the same math as for one parameter
    P[o_i : o_i + s_i] = c(P[o_i : o_i + s_i])         an elementwise constraint c, once per run of
                                                       parameters that share it (the bucket is ordered so)
    p_i[...] = P[o_i : o_i + s_i]                      written back: one kernel (cuda_flat) for all

Each ``state_i[k]`` is left as a view of ``S_k`` (reshaped to p_i's shape), so later steps gather no
state: while every view is still the array in ``state_i[k]`` the flat buffer is used as it is, else
(``load_state_dict``, a model moved and back) it is gathered again. ``p.data`` and ``p.grad`` are never
replaced, only written in place.

Exact: an optimizer that declares ``elementwise_update = True`` (SGD, Adam / AdamW, Bop) computes each
element of the new parameter and state from the same element of p, g and the state and from scalars
only, so the concatenated update gives every element the bits of the per-parameter update; a constraint
flagged ``elementwise = True`` (``bitnet.nn.quantized.clip_unit``) likewise. Other constraints run per
parameter after the write-back. Parameters on the CPU keep the per-parameter path (its Numba kernels
have no launch cost).
"""
from __future__ import annotations

from bitnet.gpu.arrays import array_module, is_device_array
from bitnet.gpu.raw_kernels import PointerTable, blocks_for, c_type, launch, takes
from bitnet.kernels import cuda_flat as KF

__all__ = ["FlatUpdates"]


def _scalar_key(value):
    """A hashable key for a non-array state value (a step count), or None where it has none."""
    try:
        hash(value)
    except TypeError:
        return None
    return (type(value).__name__, value)


def _bucket_key(data, state):
    """The key of the bucket a parameter joins: its dtype, its scalar state, the names of its array
    state; None where it must be updated alone (state arrays of another dtype or shape, unhashable
    state)."""
    arrays, scalars = [], []
    for k, v in state.items():
        if is_device_array(v):
            if v.dtype != data.dtype or v.shape != data.shape:
                return None
            arrays.append(k)
        else:
            sk = _scalar_key(v)
            if sk is None:
                return None
            scalars.append((k, sk))
    return data.dtype.str, tuple(sorted(scalars)), tuple(sorted(arrays))


def _constraint_order(p):
    """Sort key: parameters with the same elementwise constraint next to each other, others first."""
    c = getattr(p, "constraint", None)
    return 0 if c is None or not getattr(c, "elementwise", False) else id(c)


class _Layout:
    """Where each parameter of one bucket lies in the flat arrays, and the flat state arrays kept
    for it between steps (``flat[k]``, with ``views[k][i]`` the array in parameter i's state)."""

    def __init__(self, params):
        self.params = params
        self.shapes = [p.data.shape for p in params]
        self.bounds, start = [], 0
        for p in params:
            self.bounds.append((start, start + p.data.size))
            start += p.data.size
        self.flat, self.views = {}, {}
        self.table = self.offsets = None

    def data_table(self, xp):
        """The parameters' arrays as a ``PointerTable`` (the same arrays as when it was made, else made
        again), or None where one is not C-contiguous or the dtype has no kernel."""
        arrays = [p.data for p in self.params]
        if self.table is None or any(a is not b for a, b in zip(self.table.arrays, arrays)):
            usable = takes(arrays[0].dtype) and all(a.flags.c_contiguous for a in arrays)
            self.table = PointerTable(arrays) if usable else None
            self.offsets = xp.asarray(KF.offsets_of([a.size for a in arrays])) if usable else None
        return self.table

    def split(self, flat):
        """Views of ``flat`` in each parameter's shape."""
        return [flat[a:b].reshape(shape) for (a, b), shape in zip(self.bounds, self.shapes)]

    def gather(self, xp, arrays):
        return xp.concatenate([a.reshape(-1) for a in arrays])

    def state_array(self, xp, key, states):
        """The flat array of state ``key``: the kept one while every parameter's state still holds its
        view, else gathered again and the views put into the states."""
        views = self.views.get(key)
        if views is None or any(s[key] is not v for s, v in zip(states, views)):
            self.adopt(key, self.gather(xp, [s[key] for s in states]), states)
        return self.flat[key]

    def adopt(self, key, flat, states):
        self.flat[key], self.views[key] = flat, self.split(flat)
        for s, v in zip(states, self.views[key]):
            s[key] = v


class FlatUpdates:
    """The buckets and kept layouts of one optimizer (``Optimizer._flat``); ``run`` does one group's
    step for its parameters on a device."""

    def __init__(self):
        self.layouts: dict = {}
        self.used: set = set()

    def begin(self):
        self.used = set()

    def end(self):
        """Forget the layouts no bucket used in this step (parameters moved, gradients gone)."""
        for key in [k for k in self.layouts if k not in self.used]:
            del self.layouts[key]

    def run(self, optimizer, group, items):
        """Update ``items`` (``(param, grad, state)`` on a device, one group) in buckets; a parameter
        that cannot join one, or is alone in its bucket, is updated by itself."""
        buckets = {}
        for item in items:
            key = _bucket_key(item[0].data, item[2])
            buckets.setdefault(key, []).append(item)
        for key, bucket in buckets.items():
            if key is None or len(bucket) == 1:
                for p, grad, state in bucket:
                    optimizer._update(p.data, grad, state, group)
                    _constrain(p)
            else:
                bucket.sort(key=lambda item: _constraint_order(item[0]))
                self._run_bucket(optimizer, group, key, bucket)

    def _run_bucket(self, optimizer, group, key, bucket):
        params = [p for p, _, _ in bucket]
        states = [s for _, _, s in bucket]
        ident = (tuple(id(p) for p in params), key[0])
        layout = self.layouts.get(ident)
        if layout is None or any(a is not b for a, b in zip(layout.params, params)) or \
                layout.shapes != [p.data.shape for p in params]:
            layout = self.layouts[ident] = _Layout(params)
        self.used.add(ident)
        xp = array_module(params[0].data)
        table, total, dtype = layout.data_table(xp), layout.bounds[-1][1], params[0].data.dtype
        if table is not None:  # one kernel (bitnet.kernels.cuda_flat) from the kept table of addresses
            flat_data = xp.empty(total, dtype)
            launch(KF, "flat_gather", blocks_for(total, KF.THREADS), KF.THREADS,
                   (table, layout.offsets, len(params), total, flat_data), dict(FL_T=c_type(dtype)))
        else:
            flat_data = layout.gather(xp, [p.data for p in params])
        flat_grad = layout.gather(xp, [g for _, g, _ in bucket])
        flat_state = {k: layout.state_array(xp, k, states) for k in key[2]}
        flat_state.update({k: states[0][k] for k, _ in key[1]})
        optimizer._update(flat_data, flat_grad, flat_state, group)
        for k, v in flat_state.items():
            if is_device_array(v):
                if layout.flat.get(k) is not v:  # created or replaced by the update
                    layout.adopt(k, v, states)
            else:
                for s in states:
                    s[k] = v
        for k in set(states[0]) - set(flat_state):  # removed by the update
            for s in states:
                del s[k]
            layout.flat.pop(k, None)
            layout.views.pop(k, None)
        run_start = 0
        for i in range(1, len(params) + 1):  # elementwise constraints, once per run sharing one
            c = getattr(params[run_start], "constraint", None)
            if i == len(params) or getattr(params[i], "constraint", None) is not c:
                if c is not None and getattr(c, "elementwise", False):
                    c(flat_data[layout.bounds[run_start][0]:layout.bounds[i - 1][1]])
                run_start = i
        if table is not None:
            launch(KF, "flat_scatter", blocks_for(total, KF.THREADS), KF.THREADS,
                   (flat_data, table, layout.offsets, len(params), total), dict(FL_T=c_type(dtype)))
        else:
            for p, view in zip(params, layout.split(flat_data)):
                p.data[...] = view
        for p in params:
            c = getattr(p, "constraint", None)
            if c is not None and not getattr(c, "elementwise", False):
                c(p.data)


def _constrain(p):
    constraint = getattr(p, "constraint", None)
    if constraint is not None:
        constraint(p.data)
