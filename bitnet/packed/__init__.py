"""Packed inference: binary layers whose weights are bits in uint64 words (see ``fold`` for how
batch norm is folded into them)."""
from bitnet.packed.fold import batchnorm_pairs, fold_batchnorm, has_binary_kernel

__all__ = ["batchnorm_pairs", "fold_batchnorm", "has_binary_kernel"]
