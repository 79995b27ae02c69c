"""ResNet-18 in CIFAR-10 shape (32x32x3 input), float and binary.

    stem: conv 3x3x64 (stride 1, pad 1) -> BN (-> ReLU where stage 1 is float)   full precision
    4 stages of 2 basic blocks, 64 / 128 / 256 / 512 channels, stride 2 at the start of stages 2-4
    global average pool -> dense num_classes                                  full precision

Float basic block (He et al. 2016): out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)),
with a 1x1 conv + BN shortcut where the shape changes. 11,173,962 parameters, as torchvision-style
CIFAR ResNet-18s.

Binary basic block (BMXNet keeps the stem and the classifier in full precision; the shortcut
around every binary convolution follows Bi-Real Net, which is what makes binary ResNets train):

    y   = bn1(qconv1(x)) + shortcut(x)        qconv: ste_sign input, ste_sign kernel, pad_value +1
    out = bn2(qconv2(y)) + y

where the downsampling shortcut (stride 2 or more channels) stays in full precision: avg-pool 2
then conv 1x1 + BN (as in Bi-Real Net and Larq's models). The pool is in ceil mode, so that a map of
odd size (28x28 MNIST images reach stage 3 as 7x7) gives the ceil(H / 2) rows of the stride-2
convolution beside it, its last window clipped; on even maps ceil and floor mode are the same. ``full_precision_stages`` keeps whole
stages (1..4) float, BMXNet's partially binarized models.

Where stage 1 is binary the stem ends in its batch norm, not in a ReLU (as Bi-Real Net's): the first
binary convolution binarizes the stem's output, and sign(relu(v)) = +1 for every v, so behind a ReLU
stage 1 reads nothing but +1 signs. At initialization each of its convolutions then gives one
constant per channel, which batch norm in training mode turns into exact zeros: stage 1 is an
identity and five binary convolutions get no gradient. Training shifts the batch norms' biases and
brings most of them back, but the first one reads the stem's output itself and stays dead for good;
its batch norm's running variance goes to 0, so in eval mode it divides rounding noise by sqrt(eps),
and test accuracy collapsed (``python -m bitnet.bench.resnet_stem``, docs/benchmarks.md). Files
written before this change (``stem_relu=True`` in their architecture) load as they were written.
"""
from __future__ import annotations

from bitnet import functional as F
from bitnet import nn
from bitnet.models.registry import register
from bitnet.nn import args as A
from bitnet.nn.init import as_generator

MAX_STAGES = 8  # 64 * 2**7 = 8192 channels in the last stage


def _shortcut(cin, cout, stride, binary, rng, binary_shortcut=False):
    if stride == 1 and cin == cout:
        return None
    if binary and binary_shortcut:  # BMXNet's layout: a binary 1x1 convolution (sign input and weights)
        return nn.Sequential(nn.QConv2d(cin, cout, 1, stride=stride, bias=False, rng=rng), nn.BatchNorm2d(cout))
    if binary:  # full-precision downsampling, pooled first (Bi-Real Net); ceil mode: odd maps (module docstring)
        pool = nn.AvgPool2d(stride, ceil_mode=True) if stride > 1 else nn.Identity()
        return nn.Sequential(pool, nn.Conv2d(cin, cout, 1, bias=False, rng=rng), nn.BatchNorm2d(cout))
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False, rng=rng), nn.BatchNorm2d(cout))


@nn.register("bitnet.models.BasicBlock")
class BasicBlock(nn.Module):
    """Basic block, float or binary (``binary=True``); see the module docstring for both."""

    # each conv's output feeds only the batch norm after it (bitnet.packed.fold)
    FOLDABLE_BATCHNORMS = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(self, cin, cout, stride=1, binary=False, rng=None, binary_shortcut=False):
        super().__init__()
        conv = nn.QConv2d if binary else nn.Conv2d
        self.binary = binary
        self.conv1 = conv(cin, cout, 3, stride=stride, padding=1, bias=False, rng=rng)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = conv(cout, cout, 3, padding=1, bias=False, rng=rng)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = _shortcut(cin, cout, stride, binary, rng, binary_shortcut)

    @classmethod
    def state_bytes(cls, config):
        """The block's parameters and buffers from its config (``Module.state_bytes``)."""
        a = cls._arguments(config)
        return _block_bytes(a["cin"], a["cout"], a["stride"], a["binary"], a["binary_shortcut"])

    def forward(self, x):
        sc = x if self.shortcut is None else self.shortcut(x)
        if self.binary:
            y = self.bn1(self.conv1(x)) + sc
            return self.bn2(self.conv2(y)) + y
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + sc)

    @property
    def forward_program(self):
        """The forward as a program over the children (``bitnet.packed.lowering``: the packed model's
        CPU plans and GPU steps run a block that stays unpacked, e.g. a full-precision stage's, from it)."""
        if self.binary:  # y = bn1(conv1(x)) + sc(x); out = bn2(conv2(y)) + y
            return (("add", ("conv1", "bn1"), ("shortcut",)), ("add", ("conv2", "bn2"), ()))
        return (("add", ("conv1", "bn1", ("relu",), "conv2", "bn2"), ("shortcut",)), ("relu",))  # float

    def to_packed(self, pack_layer):
        """``bitnet.pack`` hook: the binary block as a ``PackedResidualBlock`` (both residual additions
        in the kernels' epilogue, channels-last, signs handed over packed); None for a float block
        or binary layers that do not run on bits."""
        from bitnet.packed.blocks import ChannelsLastShortcut, PackedResidualBlock
        from bitnet.packed.layers import packable
        if not (self.binary and packable(self.conv1) and packable(self.conv2)):
            return None
        shortcut = self.shortcut
        if shortcut is not None:
            mods = list(shortcut._modules.values())
            if len(mods) == 2 and packable(mods[0]):  # binary shortcut: a packed 1x1 convolution
                from bitnet.nn import Identity, Sequential
                shortcut = Sequential(pack_layer(mods[0], mods[1]), Identity())  # names as in the float model
            else:
                shortcut = ChannelsLastShortcut.from_modules(shortcut) or shortcut.eval()
        return PackedResidualBlock(pack_layer(self.conv1, self.bn1), pack_layer(self.conv2, self.bn2), shortcut)

    def extra_repr(self):
        return "binary" if self.binary else ""


@nn.register("bitnet.models.ResNet")
class ResNet(nn.Module):
    """ResNet for 32x32 inputs; ``binary_stages`` lists the stages (1..4) built from binary blocks;
    ``stem_relu``: whether the stem ends in a ReLU (the float ResNet's; a binary stage 1 wants it off:
    module docstring). Its default, True, is what files written before it existed hold."""

    def __init__(self, blocks=(2, 2, 2, 2), num_classes=10, in_channels=3, binary_stages=(), seed=None,
                 binary_shortcuts=False, stem_relu=True):
        super().__init__()
        rng = as_generator(seed)
        _check_resnet(blocks, num_classes, in_channels, binary_stages)
        if not isinstance(stem_relu, bool):
            raise TypeError(f"ResNet: stem_relu must be True or False, got {stem_relu!r}")
        stem = [nn.Conv2d(in_channels, 64, 3, padding=1, bias=False, rng=rng), nn.BatchNorm2d(64)]
        self.stem = nn.Sequential(*stem, *([nn.ReLU()] if stem_relu else []))
        layers, cin = [], 64
        for i, n in enumerate(blocks):
            cout, stage = 64 * 2 ** i, i + 1
            for j in range(n):
                layers.append(BasicBlock(cin, cout, stride=2 if (j == 0 and i > 0) else 1,
                                         binary=stage in binary_stages, rng=rng, binary_shortcut=binary_shortcuts))
                cin = cout
        self.stages = nn.Sequential(*layers)
        self.pool = nn.GlobalAvgPool2d()
        self.fc = nn.Dense(cin, num_classes, rng=rng)

    @classmethod
    def state_bytes(cls, config):
        """The network's parameters and buffers from its config (``Module.state_bytes``), in closed form
        per stage (its first block, then ``n - 1`` equal ones)."""
        a = cls._arguments(config)
        blocks, num_classes, in_channels, binary_stages = _check_resnet(a["blocks"], a["num_classes"], a["in_channels"],
                                                                        a["binary_stages"])
        total = _conv_bn_bytes(in_channels, 64, 3, bias=False)
        cin = 64
        for i, n in enumerate(blocks):
            cout, binary = 64 * 2 ** i, i + 1 in binary_stages
            if n:
                total += _block_bytes(cin, cout, 2 if i > 0 else 1, binary, a["binary_shortcuts"])
                total += (n - 1) * _block_bytes(cout, cout, 1, binary, a["binary_shortcuts"])
                cin = cout
        return total + nn.Dense.state_bytes(dict(in_features=cin, out_features=num_classes))

    # the forward is the composition of these children, in this order (bitnet.packed.lowering)
    forward_chain = ("stem", "stages", "pool", "fc")

    def forward(self, x):
        return self.fc(self.pool(self.stages(self.stem(x))))

    def to_packed(self, pack_layer):
        """``bitnet.pack`` hook (runs on the packed copy): when the first stage is binary, the float
        stem becomes a channels-last convolution with its batch norm (and ReLU, if any) fused
        (``bitnet.packed.ChannelsLastConv2d``), so the packed blocks get their input without a
        transposition; the blocks are then packed by their own hook."""
        from bitnet.packed.blocks import ChannelsLastConv2d
        first = next(iter(self.stages._modules.values()), None)
        if getattr(first, "binary", False):
            self.stem = ChannelsLastConv2d.from_sequential(self.stem) or self.stem
        return None


def _check_resnet(blocks, num_classes, in_channels, binary_stages) -> tuple:
    """ResNet's arguments, checked: 1..MAX_STAGES stages of >= 0 blocks, sizes >= 1, binary stages
    among the stage numbers."""
    if not isinstance(blocks, (list, tuple)) or not 1 <= len(blocks) <= MAX_STAGES:
        raise ValueError(f"ResNet: blocks must list the blocks of 1 to {MAX_STAGES} stages, got {blocks!r}")
    blocks = [A.size("ResNet", f"blocks[{i}]", n, low=0) for i, n in enumerate(blocks)]
    if not isinstance(binary_stages, (list, tuple)):
        raise TypeError(f"ResNet: binary_stages must be a list of stage numbers, got {binary_stages!r}")
    bad = [s for s in binary_stages if isinstance(s, bool) or s not in range(1, len(blocks) + 1)]
    if bad:
        raise ValueError(f"stage numbers must be in 1..{len(blocks)}, got {bad}")
    return (blocks, A.size("ResNet", "num_classes", num_classes), A.size("ResNet", "in_channels", in_channels),
            set(binary_stages))


def _conv_bn_bytes(cin, cout, k, stride=1, padding=None, bias=False) -> int:
    conv = dict(in_channels=cin, out_channels=cout, kernel_size=k, stride=stride,
                padding=k // 2 if padding is None else padding, bias=bias)
    return nn.Conv2d.state_bytes(conv) + nn.BatchNorm2d.state_bytes(dict(num_features=cout))


def _block_bytes(cin, cout, stride, binary, binary_shortcut) -> int:
    """BasicBlock's parameters and buffers (QConv2d's are Conv2d's: latent float weights)."""
    cin, cout = A.size("BasicBlock", "cin", cin), A.size("BasicBlock", "cout", cout)
    stride = A.size("BasicBlock", "stride", stride)
    total = _conv_bn_bytes(cin, cout, 3, stride) + _conv_bn_bytes(cout, cout, 3)
    if stride != 1 or cin != cout:
        total += _conv_bn_bytes(cin, cout, 1, stride if binary and binary_shortcut or not binary else 1, 0)
    return total


def _check_image_size(image_size):
    if image_size < 8:
        raise ValueError(f"resnet18 needs images of at least 8x8 pixels, got {image_size}x{image_size}")


@register("resnet18")
def resnet18(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, seed=None) -> ResNet:
    """Float ResNet-18 in CIFAR-10 shape."""
    _check_image_size(image_size)
    return ResNet(num_classes=num_classes, in_channels=in_channels, seed=seed)


@register("resnet18-binary")
def resnet18_binary(num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                    full_precision_stages=(), shortcut: str = "float", stem_relu=None, seed=None) -> ResNet:
    """Binary ResNet-18 in CIFAR-10 shape: stem and classifier in full precision, and the stages
    listed in ``full_precision_stages`` (1..4) too (BMXNet's partially binarized models).
    ``shortcut``: ``"float"`` (avg-pool + float 1x1 conv, Bi-Real Net) or ``"binary"`` (a binary
    1x1 convolution with stride, BMXNet's layout: the smallest file) for the downsampling shortcuts.
    ``stem_relu``: None (the default) ends the stem in a ReLU only where stage 1 is full precision
    (module docstring: a binary stage 1 behind a ReLU reads only +1 signs); True or False forces it."""
    if shortcut not in ("float", "binary"):
        raise ValueError(f"shortcut must be 'float' or 'binary', got {shortcut!r}")
    _check_image_size(image_size)
    bad = [s for s in full_precision_stages if s not in (1, 2, 3, 4)]
    if bad:
        raise ValueError(f"full_precision_stages must be stage numbers in 1..4, got {list(full_precision_stages)}")
    binary = tuple(s for s in (1, 2, 3, 4) if s not in full_precision_stages)
    if stem_relu is None:
        stem_relu = 1 not in binary
    if not isinstance(stem_relu, bool):
        raise TypeError(f"resnet18-binary: stem_relu must be None, True or False, got {stem_relu!r}")
    return ResNet(num_classes=num_classes, in_channels=in_channels, binary_stages=binary, seed=seed,
                  binary_shortcuts=shortcut == "binary", stem_relu=stem_relu)
