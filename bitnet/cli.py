"""The ``bitnet`` command line: ``train``, ``convert``, ``summary``, ``eval``, ``predict``, ``bench``.

Run ``bitnet COMMAND --help`` for each command's options. Errors that come from the user's input
(missing data files, unknown names, bad values) print one clear message and exit with status 2.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


def _train_parser(sub):
    from bitnet import models
    from bitnet.data.datasets import NAMES
    p = sub.add_parser("train", help="train a zoo model on a dataset and report its test accuracy",
                       description="Train a model from the zoo; the last line printed is "
                                   "'test accuracy: X'.")
    p.add_argument("--model", default="lenet", choices=models.names(), help="zoo model name (default: lenet)")
    p.add_argument("--dataset", default="mnist", choices=NAMES, help="dataset (default: mnist)")
    _data_options(p)
    p.add_argument("--epochs", type=int, default=3, help="passes over the training set (default: 3)")
    p.add_argument("--batch-size", type=int, default=128, help="minibatch size (default: 128)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, shuffling and dropout (default: 0)")
    p.add_argument("--optimizer", default="adam", choices=("adam", "adamw", "sgd"), help="default: adam")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: 1e-3)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="default: 0")
    p.add_argument("--schedule", default="cosine", choices=("cosine", "constant"),
                   help="learning-rate schedule over all iterations (default: cosine)")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up iterations (default: 0)")
    p.add_argument("--limit-train", type=int, default=None,
                   help="use only the first N training images (quick runs)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    p.add_argument("--save", default=None, metavar="CKPT",
                   help="write a training checkpoint (HDF5) after every epoch, atomically")
    p.add_argument("--resume", default=None, metavar="CKPT",
                   help="continue the run saved in CKPT (model, optimizer, schedule, data order) from "
                        "its next epoch up to --epochs; the other options must be those of the saved run")
    p.set_defaults(run=cmd_train)


def _data_options(p):
    """Where the dataset's files are, and whether missing ones may be downloaded (train and eval)."""
    p.add_argument("--data-dir", default=None,
                   help="folder holding the dataset (or a parent with mnist/, fashion-mnist/, cifar-10/); "
                        "default: $BITNET_DATA, else ~/.cache/bitnet/data")
    p.add_argument("--no-download", dest="download", action="store_false",
                   help="fail if the files are missing instead of downloading them (by default missing MNIST "
                        "and Fashion-MNIST files are downloaded into the data folder, checksummed)")
    p.add_argument("--download", dest="download", action="store_true",
                   help="download missing files: the default, accepted for old scripts")
    p.set_defaults(download=True)


def _make_optimizer(name, params, lr, weight_decay):
    from bitnet import optim
    if name == "sgd":
        return optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    cls = optim.AdamW if name == "adamw" else optim.Adam
    return cls(params, lr=lr, weight_decay=weight_decay)


def cmd_train(args) -> int:
    from bitnet import models, optim
    from bitnet.data import DataLoader
    from bitnet.data.datasets import load_splits, transform_for
    from bitnet.training import evaluate, fit

    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    seeds = np.random.SeedSequence(args.seed).spawn(2)
    (x_train, y_train), (x_test, y_test) = load_splits(args.dataset, ("train", "test"), args.data_dir,
                                                       args.download)
    if args.limit_train is not None:
        x_train, y_train = x_train[:args.limit_train], y_train[:args.limit_train]
    transform = transform_for(args.dataset)
    train_loader = DataLoader((x_train, y_train), args.batch_size, shuffle=True,
                              rng=np.random.default_rng(seeds[0]), transform=transform)
    test_loader = DataLoader((x_test, y_test), 1000, transform=transform)

    import bitnet
    sample = transform(x_train[:1])
    if args.resume:
        model = bitnet.load(args.resume)
    else:
        model = models.get(args.model, in_channels=sample.shape[1], image_size=sample.shape[-1],
                           num_classes=int(y_train.max()) + 1, seed=np.random.default_rng(seeds[1]))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _make_optimizer(args.optimizer, params, args.lr, args.weight_decay)
    total = args.epochs * len(train_loader)
    scheduler = None
    if args.schedule == "cosine":
        scheduler = optim.WarmupCosine(optimizer, warmup_steps=args.warmup_steps, total_steps=total)
    elif args.warmup_steps:
        scheduler = optim.LinearWarmup(optimizer, warmup_steps=args.warmup_steps)
    start = 1
    if args.resume:
        state = bitnet.load_training_state(args.resume)
        if state.epoch is None or state.optimizer is None:
            raise ValueError(f"{args.resume}: not a training checkpoint (no epoch or optimizer state); "
                             "write one with bitnet train --save")
        state.restore(optimizer, train_loader.rng, scheduler)
        start = state.epoch + 1
    log = None if args.quiet else print
    if log:
        log(f"training {_describe(model)} on {args.dataset}: {len(y_train)} images, {args.epochs} epochs, "
            f"batch {args.batch_size}, {args.optimizer} lr {args.lr}, {model.num_parameters()} parameters"
            + (f"; resumed from {args.resume} after epoch {start - 1}" if args.resume else ""))

    def save_checkpoint(epoch, stats):
        bitnet.save(model, args.save, optimizer=optimizer, epoch=epoch, rng=train_loader.rng, scheduler=scheduler)

    if start <= args.epochs:
        fit(model, optimizer, train_loader, args.epochs, scheduler=scheduler, progress=not args.quiet, log=log,
            start_epoch=start, after_epoch=save_checkpoint if args.save else None)
    loss, acc = evaluate(model, test_loader)
    if log:
        log(f"test loss: {loss:.4f}")
    print(f"test accuracy: {acc:.4f}")
    return 0


def _file_parsers(sub):
    p = sub.add_parser("convert", help="write the packed deployment file (1 bit per binary weight) of a checkpoint",
                       description="Convert a checkpoint (bitnet train --save, bitnet.save) into a packed HDF5 "
                                   "file that bitnet.load_packed and bitnet eval / predict run on bits.")
    p.add_argument("input", help="checkpoint file (HDF5)")
    p.add_argument("output", help="packed file to write (HDF5; written atomically)")
    _import_option(p)
    p.set_defaults(run=cmd_convert)
    p = sub.add_parser("summary", help="layers, bit widths, packed size and MACs of a model file",
                       description="Print bitnet.summary of the model in a checkpoint or packed file.")
    p.add_argument("file", help="checkpoint or packed file (HDF5)")
    p.add_argument("--input-shape", default=None, metavar="C,H,W",
                   help="input shape for a file that does not record it (zoo models and files saved with "
                        "input_shape= do)")
    _import_option(p)
    p.set_defaults(run=cmd_summary)
    p = sub.add_parser("eval", help="test accuracy of a model file on a dataset",
                       description="Evaluate a checkpoint or packed file on a dataset's test split; the "
                                   "last line printed is 'test accuracy: X'.")
    p.add_argument("file", help="checkpoint or packed file (HDF5)")
    from bitnet.data.datasets import NAMES
    p.add_argument("--dataset", default="mnist", choices=NAMES, help="dataset (default: mnist)")
    _data_options(p)
    p.add_argument("--batch-size", type=int, default=1000, help="default: 1000")
    _device_option(p)
    _import_option(p)
    p.set_defaults(run=cmd_eval)
    p = sub.add_parser("predict", help="predicted classes of a model file for images",
                       description="Predict the class of each image in INPUT (a .npy array, an IDX file, a binary "
                                   "PGM or a PNG image; uint8 pixels, or floats in [0, 1]) with a checkpoint or "
                                   "packed file; one line per image: index, class, probability.")
    p.add_argument("file", help="checkpoint or packed file (HDF5)")
    p.add_argument("input", help="images: .npy, IDX (e.g. t10k-images-idx3-ubyte), PGM or PNG")
    p.add_argument("--dataset", default="mnist", choices=NAMES,
                   help="the dataset the model was trained on: its input normalization (default: mnist)")
    p.add_argument("--limit", type=int, default=None, help="predict only the first N images")
    _device_option(p)
    _import_option(p)
    p.set_defaults(run=cmd_predict)


def _import_option(p):
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (repeatable): the module that defines and registers your own "
                        "classes (@bitnet.nn.register), found from the current folder like `python -m`")


def _import_modules(names):
    """Import the modules of ``--import`` (the current folder first on the path, as ``python -m``)."""
    import importlib
    import os
    if names and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ValueError(f"--import {name}: cannot import it ({e}); give a module name (mynet for ./mynet.py, "
                             "package.module for a package), run from the folder that holds it") from None


def _device_option(p):
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where a packed file runs (default: cpu); cuda: on an NVIDIA GPU (docs/gpu.md)")


def _load_any(path, device="cpu"):
    """(model ready for inference, what the file is: ``bitnet.io.describe``) from a checkpoint or a
    packed file (on ``device``)."""
    import bitnet
    from bitnet.io import describe
    info = describe(path)
    if info["kind"] == "packed":
        return bitnet.load_packed(path, device=device), info
    if info["kind"] != "checkpoint":
        raise ValueError(f"{path} holds weights only (bitnet.save_state_dict), no architecture: load it in Python "
                         "into the model it belongs to (model.load_state_dict(bitnet.load_state_dict(path)))")
    if device != "cpu":
        raise ValueError(f"{path} is a checkpoint; --device {device} runs packed files: convert it first "
                         f"(bitnet convert {path} OUT.h5)")
    return bitnet.load(path).eval(), info


def _describe(model):
    cfg = getattr(model, "zoo_config", None)
    if cfg:
        return f"{cfg['name']} {cfg['kwargs'] or ''}".rstrip()
    return f"{type(model).__name__} of {len(model._modules)} modules"


def _input_shape(info, given=None):
    """(C, H, W) of the model's input: ``given`` ("C,H,W"), else what the file records (its zoo
    builder's arguments, or the input_shape given to save / convert); None when neither says."""
    if given:
        try:
            shape = tuple(int(v) for v in given.split(","))
        except ValueError:
            raise ValueError(f"--input-shape must be C,H,W (integers), got {given!r}") from None
        if not shape or min(shape) < 1:
            raise ValueError(f"--input-shape must be positive sizes, e.g. 1,28,28; got {given!r}")
        return shape
    return None if info["input_shape"] is None else tuple(info["input_shape"])


def cmd_convert(args) -> int:
    import os

    import bitnet
    bitnet.convert(args.input, args.output)
    print(f"wrote {args.output}: {os.path.getsize(args.output)} bytes (from {os.path.getsize(args.input)})")
    return 0


def cmd_summary(args) -> int:
    import os

    import bitnet
    from bitnet.io import describe, load_architecture
    info = describe(args.file)
    if info["kind"] == "state_dict":
        raise ValueError(f"{args.file} holds weights only (bitnet.save_state_dict): it has no architecture to summarize")
    model = load_architecture(args.file)
    print(f"{args.file}: {info['kind']} file of {os.path.getsize(args.file)} bytes, model {_describe(model)}")
    shape = _input_shape(info, args.input_shape)
    if shape is None:
        raise ValueError(f"{args.file} does not record its input shape; pass it, e.g. --input-shape 1,28,28 "
                         "(or save with bitnet.save(..., input_shape=(C, H, W)))")
    bitnet.summary(model, shape)
    if info["kind"] == "packed":
        packed = bitnet.load_packed(args.file, micro_batch=None)
        print(f"layers on bits in this file: {', '.join(packed.packed_layers) or 'none'}")
    return 0


def cmd_eval(args) -> int:
    from bitnet.data import DataLoader
    from bitnet.data.datasets import load_splits, transform_for
    from bitnet.training import evaluate
    model, info = _load_any(args.file, args.device)
    [(x_test, y_test)] = load_splits(args.dataset, ("test",), args.data_dir, args.download)
    loader = DataLoader((x_test, y_test), args.batch_size, transform=transform_for(args.dataset))
    loss, acc = evaluate(model, loader)
    print(f"{args.file} ({info['kind']}) on {args.dataset} test: loss {loss:.4f}")
    print(f"test accuracy: {acc:.4f}")
    return 0


def cmd_predict(args) -> int:
    from bitnet import Tensor, functional as F, no_grad
    from bitnet.data.datasets import transform_for
    from bitnet.data.images import read_input
    model, info = _load_any(args.file, args.device)
    x = read_input(args.input)
    if args.limit is not None:
        x = x[:max(0, args.limit)]
    shape = _input_shape(info)
    x = transform_for(args.dataset)(x)
    if shape is not None and x.shape[1:] != shape:
        raise ValueError(f"{args.input}: images of shape {x.shape[1:]} (C, H, W); the model in {args.file} "
                         f"expects {shape}")
    with no_grad():
        probs = F.softmax(model(Tensor(x)), axis=1).data
    for i, p in enumerate(probs):
        k = int(p.argmax())
        print(f"{i}\t{k}\t{p[k]:.4f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from bitnet import __version__
    parser = argparse.ArgumentParser(prog="bitnet", description="Binary neural networks on NumPy and Numba.")
    parser.add_argument("--version", action="version", version=f"bitnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _train_parser(sub)
    _file_parsers(sub)
    from bitnet.bench.cli import add_parser as add_bench
    add_bench(sub)
    return parser


def main(argv=None) -> int:
    from bitnet.data import DataFormatError, DatasetNotFoundError, DownloadError
    from bitnet.backend import CudaUnavailableError
    from bitnet.compile_notice import announce_compilation
    from bitnet.io import BitnetFileError
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    announce_compilation()  # one line on stderr if Numba has to compile kernels (first run on a machine)
    try:
        _import_modules(getattr(args, "imports", []))
        return args.run(args)
    except (DatasetNotFoundError, DataFormatError, DownloadError, BitnetFileError, CudaUnavailableError,
            FileNotFoundError, TypeError, ValueError) as exc:
        message = getattr(exc, "cli_message", exc)  # data errors word their fix as command-line options
        print(f"bitnet {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bitnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
