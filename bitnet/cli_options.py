"""Numeric command-line options, checked when they are parsed: ``type=`` functions for argparse.

A value out of range is an argparse error (exit status 2) naming the option, what was received and
what is expected, e.g. ``bitnet train: error: argument --limit-train: expected a whole number >= 1
(how many training images to use), got '0'``; nothing is loaded or trained first.
"""
from __future__ import annotations

import argparse
import math
import os

#: The most values (C x H x W) one input image may have: 1,048,576 (e.g. 1 x 1024 x 1024, or
#: 3 x 591 x 591); ``--input-shape`` beyond it is refused (a forward pass allocates many
#: times this per layer).
MAX_INPUT_VALUES = 1 << 20

#: Upper bounds of the whole-number options (far above any useful value, low enough that no loop
#: or allocation sized by them can run away).
MAX_EPOCHS = 100_000
MAX_BATCH = 1 << 16
MAX_STEPS = 1 << 40
MAX_SEED = 2 ** 63 - 1


def integer(low: int, high: int | None = None, what: str = ""):
    """An argparse ``type``: a whole number in ``low..high``; ``what`` says what it counts."""
    def parse(text: str) -> int:
        bound = f">= {low}" if high is None else f"from {low} to {high}"
        expected = f"expected a whole number {bound}" + (f" ({what})" if what else "")
        try:
            value = int(text, 10)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{expected}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{expected}, got {text!r}")
        return value
    parse.__name__ = "integer"
    return parse


def number(low: float, high: float | None = None, low_open: bool = False, what: str = ""):
    """An argparse ``type``: a finite float ``> low`` (``low_open``) or ``>= low``, at most ``high``."""
    def parse(text: str) -> float:
        bound = f"{'>' if low_open else '>='} {low:g}" + ("" if high is None else f" and <= {high:g}")
        expected = f"expected a finite number {bound}" + (f" ({what})" if what else "")
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{expected}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (low_open and value == low) \
                or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{expected}, got {text!r}")
        return value
    parse.__name__ = "number"
    return parse


def input_shape(text: str) -> tuple:
    """An argparse ``type``: ``C,H,W``, three positive whole numbers, at most ``MAX_INPUT_VALUES``
    values in all."""
    expected = f"expected C,H,W: three whole numbers >= 1, at most {MAX_INPUT_VALUES} values in all (e.g. 1,28,28)"
    try:
        shape = tuple(int(v, 10) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{expected}, got {text!r}") from None
    if len(shape) != 3 or min(shape) < 1 or math.prod(shape) > MAX_INPUT_VALUES:
        raise argparse.ArgumentTypeError(f"{expected}, got {text!r}")
    return shape


def file_name(what: str):
    """An argparse ``type``: a file name, not empty (``--save ""`` would otherwise be taken as no
    file, ``convert x.h5 ""`` fail late); ``what`` says which file, e.g. "the checkpoint to write"."""
    def parse(text: str) -> str:
        if not text:
            raise argparse.ArgumentTypeError(f"expected the name of a file ({what}), got an empty name ''")
        return text
    parse.__name__ = "file name"
    return parse


def folder(what: str):
    """An argparse ``type``: a folder that may not exist yet (it may be created), but not an empty name
    and not a path where a file stands in place of a folder."""
    def parse(text: str) -> str:
        if not text:
            raise argparse.ArgumentTypeError(f"expected a folder ({what}), got an empty name ''")
        from bitnet.io.h5 import file_in_the_way
        blocker = file_in_the_way(text)
        if blocker is not None:
            where = "it is" if os.path.abspath(text) == blocker else f"{blocker} is"
            raise argparse.ArgumentTypeError(f"expected a folder ({what}), got {text!r}: {where} a file, not a "
                                             "folder; give the folder that holds it")
        return text
    parse.__name__ = "folder"
    return parse


# the options of `bitnet train`
EPOCHS = integer(1, MAX_EPOCHS, "passes over the training set")
BATCH = integer(1, MAX_BATCH, "images per minibatch")
SEED = integer(0, MAX_SEED, "the random seed")
LEARNING_RATE = number(0.0, 10.0, low_open=True, what="the peak learning rate")
WEIGHT_DECAY = number(0.0, 1.0, what="the weight decay")
WARMUP = integer(0, MAX_STEPS, "warm-up iterations")
LIMIT_TRAIN = integer(1, None, "how many training images to use")
# of `bitnet predict`
LIMIT = integer(1, None, "how many images to predict")


def data_options(p):
    """Where the dataset's files are, and whether missing ones may be downloaded (train and eval)."""
    p.add_argument("--data-dir", default=None, type=folder("the folder holding the dataset, or its parent"),
                   help="folder holding the dataset (or a parent with mnist/, fashion-mnist/, cifar-10/); "
                        "default: $BITNET_DATA, else ~/.cache/bitnet/data")
    p.add_argument("--no-download", dest="download", action="store_false",
                   help="fail if the files are missing instead of downloading them (by default missing MNIST "
                        "and Fashion-MNIST files are downloaded into the data folder, checksummed)")
    p.add_argument("--download", dest="download", action="store_true",
                   help="download missing files: the default, accepted for old scripts")
    p.set_defaults(download=True)
