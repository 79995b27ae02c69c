"""Packed inference: binary layers whose weights are bits in uint64 words, run by the XNOR-popcount
kernels of ``bitnet.kernels``; ``pack(model)`` builds the packed copy of a trained model."""
from bitnet.packed.blocks import ChannelsLastConv2d, ChannelsLastShortcut, PackedResidualBlock
from bitnet.packed.featuremap import FeatureMap
from bitnet.packed.fold import batchnorm_pairs, fold_batchnorm, has_binary_kernel
from bitnet.packed.layers import PackedConv2d, PackedDense, SignedTensor, packable
from bitnet.packed.model import pack, pack_layer

__all__ = ["ChannelsLastConv2d", "ChannelsLastShortcut", "FeatureMap", "PackedResidualBlock", "batchnorm_pairs", "fold_batchnorm", "has_binary_kernel", "PackedConv2d", "PackedDense",
           "SignedTensor", "packable", "pack", "pack_layer"]
