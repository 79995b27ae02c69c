"""The ``bitnet`` command line: ``train``, ``convert``, ``summary``, ``eval``, ``predict``, ``bench``.

Run ``bitnet COMMAND --help`` for each command's options. Errors that come from the user's input
(missing data files, unknown names, bad values, damaged files) print one clear message and exit with
status 2 (numeric options are checked as they are parsed: ``bitnet.cli_options``; files by
``bitnet.cli_files``); a checkpoint that cannot be written in the middle of training exits with 1.
Text taken from files is printed with its control characters escaped.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from bitnet import cli_distributed as dist, cli_options as opt
from bitnet.cli_files import (DATASET_CLASSES, RUN_OPTIONS, CommandError, check_destination, choose_dataset, flag,
                              images_text, not_finite, printable, reading, record_of, resume_checks, running,
                              trained_on, write_packed, writing)

_SAVED = argparse.SUPPRESS  # a run option's default: absent unless given (--resume takes the saved run's)


def _train_parser(sub):
    from bitnet import models
    from bitnet.data.datasets import NAMES
    p = sub.add_parser("train", help="train a zoo model on a dataset and report its test accuracy",
                       description="Train a model from the zoo; the last line printed is "
                                   "'test accuracy: X'.")
    p.add_argument("--model", default=_SAVED, choices=models.names(), help="zoo model name (default: lenet)")
    p.add_argument("--dataset", default=_SAVED, choices=NAMES, help="dataset (default: mnist)")
    _data_options(p)
    p.add_argument("--epochs", type=opt.EPOCHS, default=_SAVED, help="passes over the training set (default: 3)")
    p.add_argument("--batch-size", type=opt.BATCH, default=_SAVED, help="minibatch size (default: 128)")
    p.add_argument("--seed", type=opt.SEED, default=_SAVED, help="seed for weights, shuffling and dropout (default: 0)")
    p.add_argument("--optimizer", default=_SAVED, choices=("adam", "adamw", "sgd"), help="default: adam")
    p.add_argument("--lr", type=opt.LEARNING_RATE, default=_SAVED, help="peak learning rate (default: 1e-3)")
    p.add_argument("--weight-decay", type=opt.WEIGHT_DECAY, default=_SAVED, help="default: 0")
    p.add_argument("--schedule", default=_SAVED, choices=("cosine", "constant"),
                   help="learning-rate schedule over all iterations (default: cosine)")
    p.add_argument("--warmup-steps", type=opt.WARMUP, default=_SAVED, help="linear warm-up iterations (default: 0)")
    p.add_argument("--limit-train", type=opt.LIMIT_TRAIN, default=_SAVED,
                   help="use only the first N training images (quick runs)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    dist.add_options(p)
    p.add_argument("--save", default=None, metavar="CKPT",
                   help="write a training checkpoint (HDF5) after every epoch, atomically; the folder must "
                        "exist and be writable (checked before training)")
    p.add_argument("--resume", default=None, metavar="CKPT",
                   help="continue the run saved in CKPT (model, optimizer, schedule, data order) from "
                        "its next epoch up to --epochs: the options left out are the saved run's, options "
                        "given must equal them (--epochs may differ)")
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


def _warn(args, message) -> None:
    if getattr(args, "comm", None) is None or args.comm.is_main:
        print(f"bitnet {args.command}: warning: {printable(message)}", file=sys.stderr)


def cmd_train(args) -> int:
    from bitnet import models, optim
    from bitnet.data import DataLoader
    from bitnet.data.datasets import load_splits, transform_for
    from bitnet.training import evaluate, fit

    comm = args.comm = dist.communicator(args)
    main_rank = comm is None or comm.is_main
    given = {k for k in RUN_OPTIONS if hasattr(args, k)}
    if args.save and main_rank:
        check_destination(args.save, "--save")
    taken = resume_checks(args, given, lambda m: _warn(args, m)) if args.resume else []
    for k in RUN_OPTIONS:
        if not hasattr(args, k):
            setattr(args, k, RUN_OPTIONS[k])
    dist.check_batch(comm, args.batch_size)
    seeds = np.random.SeedSequence(args.seed).spawn(2)
    with dist.rank_zero_first(comm, "reading (or downloading) the dataset"):
        (x_train, y_train), (x_test, y_test) = load_splits(args.dataset, ("train", "test"), args.data_dir,
                                                           args.download)
    if args.limit_train is not None:
        x_train, y_train = x_train[:args.limit_train], y_train[:args.limit_train]
    transform = transform_for(args.dataset)
    train_loader = DataLoader((x_train, y_train), args.batch_size, shuffle=True,
                              rng=np.random.default_rng(seeds[0]), transform=transform)
    test_loader = DataLoader((x_test, y_test), 1000, transform=transform)
    steps = dist.shard(train_loader, comm)  # this rank's part of every global batch (all of it on one process)

    import bitnet
    sample = transform(x_train[:1])
    num_classes = DATASET_CLASSES[args.dataset]
    if args.resume:
        with reading(args.resume):
            model = bitnet.load(args.resume)
    else:
        model = models.get(args.model, in_channels=sample.shape[1], image_size=sample.shape[-1],
                           num_classes=num_classes, seed=np.random.default_rng(seeds[1]))
    dist.sync_batchnorm(model, comm, args.sync_batchnorm)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _make_optimizer(args.optimizer, params, args.lr, args.weight_decay)
    total = args.epochs * len(steps)
    if args.schedule == "cosine" and args.warmup_steps >= total and not args.resume:
        raise CommandError(f"--warmup-steps {args.warmup_steps}: expected fewer than the run's {total} iterations "
                           f"({args.epochs} epochs of {len(steps)} batches), or --schedule constant")
    scheduler = None
    if args.schedule == "cosine":
        scheduler = optim.WarmupCosine(optimizer, warmup_steps=args.warmup_steps, total_steps=total)
    elif args.warmup_steps:
        scheduler = optim.LinearWarmup(optimizer, warmup_steps=args.warmup_steps)
    start = 1
    if args.resume:
        with reading(args.resume, "a training state that fits this run"):
            state = bitnet.load_training_state(args.resume)
            if state.epoch is None or state.optimizer is None:
                raise CommandError(f"{args.resume}: not a training checkpoint (no epoch or optimizer state); "
                                   "write one with bitnet train --save")
            try:
                state.restore(optimizer, train_loader.rng, scheduler)
            except ValueError as e:
                raise CommandError(f"--resume {args.resume}: its training state does not fit this run: {e}") from None
        start = state.epoch + 1
    log = None if args.quiet or not main_rank else print
    if log:
        changed = [f"{flag(k)} {getattr(args, k)}" for k in taken if getattr(args, k) != RUN_OPTIONS[k]]
        log(f"training {_describe(model)} on {args.dataset}: {len(y_train)} images, {args.epochs} epochs, "
            f"batch {args.batch_size}, {args.optimizer} lr {args.lr}, {model.num_parameters()} parameters"
            + (f"; resumed from {args.resume} after epoch {start - 1}" if args.resume else "")
            + (f" (its options: {', '.join(changed)})" if changed else ""))
        if comm is not None:
            log(dist.describe(comm, steps))
    record = trained_on(args.dataset, sample.shape[1:], num_classes, vars(args))

    def save_checkpoint(epoch, stats):
        if main_rank:  # distributed: rank 0 writes, the others wait until the file is complete
            with writing(args.save, f"the checkpoint of epoch {epoch} to", code=1,
                         hint="a checkpoint there from an earlier epoch is left as it was"):
                bitnet.save(model, args.save, optimizer=optimizer, epoch=epoch, rng=train_loader.rng,
                            scheduler=scheduler, trained_on=record)
        if comm is not None:
            comm.barrier(what=f"waiting for rank 0 to write {args.save}")

    if start <= args.epochs:
        fit(model, optimizer, steps, args.epochs, scheduler=scheduler, progress=not args.quiet and main_rank, log=log,
            start_epoch=start, after_epoch=save_checkpoint if args.save else None, distributed=comm)
    loss, acc = evaluate(model, test_loader, distributed=comm)
    if log:
        log(f"test loss: {loss:.4f}")
    if main_rank:
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
    p.add_argument("--input-shape", type=opt.input_shape, default=None, metavar="C,H,W",
                   help="input shape for a file that does not record it (zoo models and files saved with "
                        f"input_shape= do); at most {opt.MAX_INPUT_VALUES} values")
    _import_option(p)
    p.set_defaults(run=cmd_summary)
    p = sub.add_parser("eval", help="test accuracy of a model file on a dataset",
                       description="Evaluate a checkpoint or packed file on a dataset's test split; the "
                                   "last line printed is 'test accuracy: X'.")
    p.add_argument("file", help="checkpoint or packed file (HDF5)")
    from bitnet.data.datasets import NAMES
    p.add_argument("--dataset", default=None, choices=NAMES,
                   help="dataset (default: the one the file records it was trained on, else mnist)")
    _data_options(p)
    p.add_argument("--batch-size", type=opt.BATCH, default=1000, help="default: 1000")
    _force_option(p)
    _device_option(p)
    _import_option(p)
    p.set_defaults(run=cmd_eval)
    p = sub.add_parser("predict", help="predicted classes of a model file for images",
                       description="Predict the class of each image in INPUT (a .npy array, an IDX file, a binary "
                                   "PGM or a PNG image; uint8 pixels, or floats in [0, 1]) with a checkpoint or "
                                   "packed file; one line per image: index, class, probability.")
    p.add_argument("file", help="checkpoint or packed file (HDF5)")
    p.add_argument("input", help="images: .npy, IDX (e.g. t10k-images-idx3-ubyte), PGM or PNG")
    p.add_argument("--dataset", default=None, choices=NAMES,
                   help="the dataset the model was trained on: its input normalization (default: the one "
                        "the file records, else mnist)")
    p.add_argument("--limit", type=opt.LIMIT, default=None, help="predict only the first N images")
    _force_option(p)
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


def _force_option(p):
    p.add_argument("--force", action="store_true",
                   help="run even though --dataset is not the dataset the file records it was trained on "
                        "(a warning instead of an error)")


def _device_option(p):
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where a packed file runs (default: cpu); cuda: on an NVIDIA GPU (docs/gpu.md)")


def _describe_file(path):
    """``(describe(path), its training record or None)``, every failure a ``BitnetFileError``."""
    from bitnet.io import describe
    with reading(path):
        info = describe(path)
    return info, record_of(path, info)


def _load_any(path, info, device="cpu"):
    """The model in a checkpoint or a packed file (on ``device``), ready for inference."""
    import bitnet
    if info["kind"] not in ("checkpoint", "packed"):
        raise CommandError(f"{path} holds weights only (bitnet.save_state_dict), no architecture: load it in Python "
                           "into the model it belongs to (model.load_state_dict(bitnet.load_state_dict(path)))")
    if info["kind"] == "checkpoint" and device != "cpu":
        raise CommandError(f"{path} is a checkpoint; --device {device} runs packed files: convert it first "
                           f"(bitnet convert {path} OUT.h5)")
    with reading(path):
        return bitnet.load_packed(path, device=device) if info["kind"] == "packed" else bitnet.load(path).eval()


def _describe(model):
    cfg = getattr(model, "zoo_config", None)
    if cfg:
        return f"{cfg['name']} {cfg['kwargs'] or ''}".rstrip()
    return f"{type(model).__name__} of {len(model._modules)} modules"


def cmd_convert(args) -> int:
    import os

    import bitnet
    info, record = _describe_file(args.input)
    if info["kind"] != "checkpoint":
        raise CommandError(f"{args.input}: a {info['kind']} file; expected a checkpoint (bitnet train --save, "
                           "bitnet.save)")
    check_destination(args.output, "output file")
    with reading(args.input):
        model = bitnet.load(args.input)
    with writing(args.output, "the packed file", hint="a file there is left as it was"):
        write_packed(model, args.output, info["input_shape"], record)
    print(f"wrote {args.output}: {os.path.getsize(args.output)} bytes (from {os.path.getsize(args.input)})")
    return 0


def cmd_summary(args) -> int:
    import io
    import os

    import bitnet
    from bitnet.io import load_architecture
    info, _ = _describe_file(args.file)
    if info["kind"] == "state_dict":
        raise CommandError(f"{args.file} holds weights only (bitnet.save_state_dict): it has no architecture to "
                           "summarize")
    with reading(args.file):
        model = load_architecture(args.file)
    shape = args.input_shape or (tuple(info["input_shape"]) if info["input_shape"] else None)
    if shape is None:
        raise CommandError(f"{args.file} does not record its input shape; pass it, e.g. --input-shape 1,28,28 "
                           "(or save with bitnet.save(..., input_shape=(C, H, W)))")
    out = io.StringIO()
    with reading(args.file, f"a model that runs on inputs of shape {shape}"):
        bitnet.summary(model, shape, file=out)
        if info["kind"] == "packed":
            packed = bitnet.load_packed(args.file, micro_batch=None)
            print(f"layers on bits in this file: {', '.join(packed.packed_layers) or 'none'}", file=out)
    print(printable(f"{args.file}: {info['kind']} file of {os.path.getsize(args.file)} bytes, model {_describe(model)}"))
    print(printable(out.getvalue(), newlines=True), end="")
    return 0


def cmd_eval(args) -> int:
    import math

    from bitnet.data import DataLoader
    from bitnet.data.datasets import load_splits, transform_for
    from bitnet.training import evaluate
    info, record = _describe_file(args.file)
    dataset = choose_dataset(args.file, info, record, args.dataset, args.force, lambda m: _warn(args, m))
    model = _load_any(args.file, info, args.device)
    [(x_test, y_test)] = load_splits(dataset, ("test",), args.data_dir, args.download)
    loader = DataLoader((x_test, y_test), args.batch_size, transform=transform_for(dataset))
    with running(args.file, f"a model that runs on {dataset}"):
        loss, acc = evaluate(model, loader)
    if not math.isfinite(loss):
        raise not_finite(args.file, model, f"on the {dataset} test set")
    print(f"{printable(args.file)} ({info['kind']}) on {dataset} test: loss {loss:.4f}")
    print(f"test accuracy: {acc:.4f}")
    return 0


def cmd_predict(args) -> int:
    from bitnet import Tensor, functional as F, no_grad
    from bitnet.data.datasets import transform_for
    from bitnet.data.images import read_input
    info, record = _describe_file(args.file)
    dataset = choose_dataset(args.file, info, record, args.dataset, args.force, lambda m: _warn(args, m))
    shape = tuple(info["input_shape"]) if info["input_shape"] else None
    model = _load_any(args.file, info, args.device)
    x = read_input(args.input, expected=shape)
    if args.limit is not None:
        x = x[:args.limit]
    if x.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
        if len(bad):
            raise CommandError(f"{args.input}: {images_text(bad.tolist(), len(x))} hold NaN or infinite values; "
                               "expected finite pixels (uint8 0-255, or floats in [0, 1])")
    x = transform_for(dataset)(x)
    with no_grad(), running(args.file, f"a model that runs on images of shape {x.shape[1:]}"):
        logits = model(Tensor(x)).data
    bad = np.flatnonzero(~np.isfinite(logits).all(axis=1))
    if len(bad):
        raise not_finite(args.file, model, f"for {images_text(bad.tolist(), len(x))}")
    probs = F.softmax(Tensor(logits), axis=1).data
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


def _error(args, message, code, newlines=False) -> int:
    rank = getattr(args, "rank_text", "")
    print(f"bitnet {args.command}{rank}: error: {printable(message, newlines)}", file=sys.stderr, flush=True)
    return code


def main(argv=None) -> int:
    from bitnet.compile_notice import announce_compilation
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    announce_compilation()  # one line on stderr if Numba has to compile kernels (first run on a machine)
    code = _run(args)
    comm = getattr(args, "comm", None)
    if comm is not None:
        if code and comm.size > 1:
            comm.abort(code)  # the other ranks would wait for this one for ever: the launcher ends them all
        comm.close()
    return code


def _run(args) -> int:
    from bitnet.backend import CudaUnavailableError
    from bitnet.data import DataFormatError, DatasetNotFoundError, DownloadError
    from bitnet.io import BitnetFileError
    try:
        _import_modules(getattr(args, "imports", []))
        return args.run(args)
    except CommandError as exc:
        return _error(args, exc, exc.code)
    except (DatasetNotFoundError, DownloadError) as exc:  # several lines: the folders searched, the mirrors tried
        return _error(args, exc.cli_message, 2, newlines=True)  # worded as command-line options
    except (DataFormatError, BitnetFileError, CudaUnavailableError, FileNotFoundError, TypeError, ValueError) as exc:
        return _error(args, exc, 2)
    except OSError as exc:  # e.g. an input file that cannot be read
        return _error(args, f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else exc, 2)
    except MemoryError:
        return _error(args, "out of memory; use smaller inputs or batches (--limit, --batch-size)", 1)
    except KeyboardInterrupt:
        print(f"bitnet {args.command}{getattr(args, 'rank_text', '')}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        comm = getattr(args, "comm", None)
        if comm is None or comm.size == 1:
            raise
        return dist.failure(args, comm, exc)  # then main ends every rank


if __name__ == "__main__":
    sys.exit(main())
