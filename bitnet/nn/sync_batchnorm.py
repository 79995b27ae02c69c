"""Synchronized batch norm: training statistics over the global batch of all ranks.

In data-parallel training a plain ``BatchNorm`` normalizes each rank's B/N samples with their own
statistics (the default: no communication, but the statistics of smaller batches).
``SyncBatchNorm1d`` / ``SyncBatchNorm2d`` compute them over all ranks' samples, so N ranks normalize
exactly as one process does the concatenated batch. Per channel, with rank r holding m_r values
(M = sum_r m_r), its mean mu_r and sum of squared deviations S_r (bitnet's batch-norm kernel):

    forward   (m_r, mu_r, S_r) gathered from every rank (one allgather of 3C numbers), combined in
              rank order (Chan et al.'s pairwise update, free of the cancellation of sum x^2 - M mu^2):
                  mu  = sum_r m_r mu_r / M
                  var = sum_r (S_r + m_r (mu_r - mu)^2) / M          (biased, to normalize)
              y = gamma (x - mu) / sqrt(var + eps) + beta;  running averages updated with mu and
              var * M / (M - 1), identically on every rank
    backward  with g = dL_r/dy on each rank, one allreduce of (sum g, sum g (x - mu)) per channel:
                  G = sum_ranks sum g,   H = sum_ranks sum g (x - mu)
                  dx = gamma invstd (g - G / M - (x - mu) invstd^2 H / M)
              dgamma = invstd sum g (x - mu) and dbeta = sum g over this rank's values only.

dx is the gradient of the sum of all ranks' losses, as one process computes it on the concatenated
batch; dgamma and dbeta are this rank's parts of it, which the gradient average
(``bitnet.distributed.GradientAverager``) turns into the gradient of the mean loss, like every other
parameter's. Without a communicator (``comm`` None, or one rank), in eval mode, and with running
statistics used, these layers are ``BatchNorm1d`` / ``BatchNorm2d`` (they are subclasses, so packing
and model files treat them alike; files name them ``SyncBatchNorm1d`` / ``SyncBatchNorm2d``).
``convert_sync_batchnorm(model, comm)`` turns a model's batch norms into these, in place.
"""
from __future__ import annotations

import numpy as np

from bitnet.kernels import batchnorm as K
from bitnet.nn.layers import BatchNorm1d, BatchNorm2d
from bitnet.ops import workspace as W
from bitnet.ops.norm import _as_ncl, update_running
from bitnet.tensor import Function


class SyncBatchNormTrain(Function):
    def forward(self, x, gamma, beta, comm=None, eps=1e-5, running_mean=None, running_var=None, momentum=0.1):
        x3 = _as_ncl(x)
        c, m = x3.shape[1], x3.shape[0] * x3.shape[2]
        local = np.zeros((3, c), np.float64)  # rows: m_r, mu_r, S_r = m_r var_r (all 0 for no values)
        if m:
            invstd_r = np.empty(c, np.float64)
            K.channel_stats(x3, eps, local[1], invstd_r)
            local[0] = m
            local[2] = np.maximum(1.0 / invstd_r ** 2 - eps, 0.0) * m
        stats = comm.allgather(local, what="the SyncBatchNorm statistics")
        total = stats[:, 0, :].sum(axis=0)
        if total[0] < 2:
            raise ValueError(f"SyncBatchNorm in training mode needs more than one value per channel over all "
                             f"ranks, got {int(total[0])} (input shape {x.shape} on rank {comm.rank}); use larger "
                             "batches or call .eval()")
        mean = np.zeros(c, np.float64)
        for r in range(stats.shape[0]):
            mean += stats[r, 0] * stats[r, 1]
        mean /= total
        ss = np.zeros(c, np.float64)
        for r in range(stats.shape[0]):
            ss += stats[r, 2] + stats[r, 0] * (stats[r, 1] - mean) ** 2
        invstd = 1.0 / np.sqrt(np.maximum(ss / total, 0.0) + eps)
        out = W.empty_like(x3)
        K.normalize_affine(x3, mean, invstd, gamma, beta, out)
        self.x, self.gamma, self.mean, self.invstd, self.comm, self.total = x3, gamma, mean, invstd, comm, total
        update_running(running_mean, running_var, mean, invstd, eps, momentum, int(total[0]))
        return out.reshape(x.shape)

    def backward(self, g):
        g3 = _as_ncl(g)
        x3, mean, invstd = self.x, self.mean, self.invstd
        bshape = (1, -1, 1)
        d = x3 - mean.reshape(bshape)  # float64: x - mu loses digits in float32 when |mu| >> std
        sums = np.empty((2, g3.shape[1]), np.float64)
        sums[0] = g3.sum(axis=(0, 2), dtype=np.float64)
        sums[1] = np.einsum("ncl,ncl->c", g3, d)
        local = sums.copy()
        self.comm.allreduce(sums, what="the SyncBatchNorm gradient sums")
        k = (self.gamma * invstd).reshape(bshape)
        mg = (sums[0] / self.total).reshape(bshape)
        mgx = (sums[1] * invstd ** 2 / self.total).reshape(bshape)
        gx = (k * (g3 - mg - d * mgx)).astype(g.dtype)
        dt = g.dtype
        return gx.reshape(g.shape), (local[1] * invstd).astype(dt), local[0].astype(dt)


class _Sync:
    """What the two SyncBatchNorm classes add to their BatchNorm: ``comm`` (set by
    ``convert_sync_batchnorm``; not saved in files) and the synchronized training forward."""

    comm = None
    forward_in_eval_is_base = True  # bitnet.packed.kinds: packed (eval) models fold it as a BatchNorm

    def forward(self, x):
        comm = self.__dict__.get("comm")
        training = self.training or not self.track_running_stats
        if comm is None or comm.size == 1 or not training:
            return super().forward(x)
        if x.ndim not in self.input_ndims or x.shape[1] != self.num_features:
            return super().forward(x)  # its error message
        weight = self.weight if self.weight is not None else np.ones(self.num_features, x.dtype)
        bias = self.bias if self.bias is not None else np.zeros(self.num_features, x.dtype)
        return SyncBatchNormTrain.apply(x, weight, bias, comm=comm, eps=self.eps, running_mean=self.running_mean,
                                        running_var=self.running_var, momentum=self._factor())


class SyncBatchNorm1d(_Sync, BatchNorm1d):
    """``BatchNorm1d`` with statistics over all ranks' batches (module docstring)."""


class SyncBatchNorm2d(_Sync, BatchNorm2d):
    """``BatchNorm2d`` with statistics over all ranks' batches (module docstring)."""


_TWINS = {BatchNorm1d: SyncBatchNorm1d, BatchNorm2d: SyncBatchNorm2d}


def convert_sync_batchnorm(model, comm):
    """Replace every ``BatchNorm1d`` / ``BatchNorm2d`` of ``model`` (and ``model`` itself, if it is one)
    by its SyncBatchNorm twin holding the same parameters and buffers (the same objects: an optimizer
    made before keeps working), and give every SyncBatchNorm layer ``comm``; returns the model."""
    def twin(bn):
        if type(bn) not in _TWINS:
            return bn
        new = _TWINS[type(bn)](**bn.get_config())
        new._parameters.clear()
        new._parameters.update(bn._parameters)
        new._buffers.clear()
        new._buffers.update(bn._buffers)
        object.__setattr__(new, "training", bn.training)
        return new

    model = twin(model)
    for module in list(model.modules()):
        for name, child in list(module._modules.items()):
            if child is not None and type(child) in _TWINS:
                module._modules[name] = twin(child)  # in place: a Sequential keeps its order
    return attach(model, comm)


def attach(model, comm):
    """Give every SyncBatchNorm layer of ``model`` the communicator ``comm`` (None: plain batch norm), e.g.
    after loading a model file that holds them; returns the model."""
    for module in model.modules():
        if isinstance(module, _Sync):
            object.__setattr__(module, "comm", comm)
    return model
