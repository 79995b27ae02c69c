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

from bitnet import cli_distributed as dist, cli_options as opt, cli_train
from bitnet.cli_files import (DATASET_SHAPES, CommandError, check_destination, check_pixels, choose_dataset,
                              describe_model, expected_input, images_text, not_finite, printable, reading, record_of,
                              running, warn, write_packed, writing)

MODEL_FILE = opt.file_name("the model file to read")

def _file_parsers(sub):
    p = sub.add_parser("convert", help="write the packed deployment file (1 bit per binary weight) of a checkpoint",
                       description="Convert a checkpoint (bitnet train --save, bitnet.save) into a packed HDF5 "
                                   "file that bitnet.load_packed and bitnet eval / predict run on bits.")
    p.add_argument("input", type=opt.file_name("the checkpoint to read"), help="checkpoint file (HDF5)")
    p.add_argument("output", type=opt.file_name("the packed file to write"),
                   help="packed file to write (HDF5; written atomically; not the input itself)")
    _import_option(p)
    p.set_defaults(run=cmd_convert)
    p = sub.add_parser("summary", help="layers, bit widths, packed size and MACs of a model file",
                       description="Print bitnet.summary of the model in a checkpoint or packed file.")
    p.add_argument("file", type=MODEL_FILE, help="checkpoint or packed file (HDF5)")
    p.add_argument("--input-shape", type=opt.input_shape, default=None, metavar="C,H,W",
                   help="input shape for a file that does not record it (zoo models and files saved with "
                        f"input_shape= do); at most {opt.MAX_INPUT_VALUES} values")
    _import_option(p)
    p.set_defaults(run=cmd_summary)
    p = sub.add_parser("eval", help="test accuracy of a model file on a dataset",
                       description="Evaluate a checkpoint or packed file on a dataset's test split; the "
                                   "last line printed is 'test accuracy: X'.")
    p.add_argument("file", type=MODEL_FILE, help="checkpoint or packed file (HDF5)")
    from bitnet.data.datasets import NAMES
    p.add_argument("--dataset", default=None, choices=NAMES,
                   help="dataset (default: the one the file records it was trained on, else mnist)")
    opt.data_options(p)
    p.add_argument("--batch-size", type=opt.BATCH, default=1000, help="default: 1000")
    _force_option(p)
    _device_option(p)
    _import_option(p)
    p.set_defaults(run=cmd_eval)
    p = sub.add_parser("predict", help="predicted classes of a model file for images",
                       description="Predict the class of each image in INPUT (a .npy array, an IDX file, a binary "
                                   "PGM or a PNG image; uint8 pixels, or floats in [0, 1]) with a checkpoint or "
                                   "packed file; one line per image: index, class, probability.")
    p.add_argument("file", type=MODEL_FILE, help="checkpoint or packed file (HDF5)")
    p.add_argument("input", type=opt.file_name("the images to predict"),
                   help="images: .npy, IDX (e.g. t10k-images-idx3-ubyte), PGM or PNG")
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
                   type=opt.file_name("a module name or the path of a .py file"),
                   help="import MODULE first (repeatable): the module that defines and registers your own "
                        "classes (@bitnet.nn.register): a module name found from the current folder like "
                        "`python -m` (mynet, package.module), or the path of a .py file (./mynet.py)")


def _is_path(name) -> bool:
    import os
    return name.endswith(".py") or os.sep in name or bool(os.altsep and os.altsep in name)


def _import_file(path):
    """Import the .py file at ``path`` as the module named by its file name (``mynet`` for ./mynet.py,
    as ``python -m mynet`` run in its folder would name it), its folder first on the path."""
    import importlib.util
    import os
    from bitnet.io.h5 import not_a_file
    if not os.path.isfile(path):
        raise not_a_file(path, "Python file")
    name = os.path.splitext(os.path.basename(path))[0]
    if not name.isidentifier():
        raise CommandError(f"--import {path}: {name!r} is not a Python module name; rename the file (letters, digits "
                           "and _, e.g. mynet.py)")
    old = sys.modules.get(name)
    if old is not None:
        if os.path.realpath(getattr(old, "__file__", "") or "") == os.path.realpath(path):
            return  # already imported
        raise CommandError(f"--import {path}: a module named {name} is already imported (from "
                           f"{getattr(old, '__file__', None) or 'Python itself'}); rename the file")
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in sys.path:
        sys.path.insert(0, folder)  # its own imports of modules beside it work, as for a script
    spec = importlib.util.spec_from_file_location(name, os.path.abspath(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def _import_modules(names):
    """Import the modules of ``--import``: module names (the current folder first on the path, as
    ``python -m``) or paths of .py files. Any failure is one ``CommandError`` naming the module and the
    exception (a SyntaxError with its file and line), never a traceback."""
    import importlib
    import os
    if names and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in names:
        try:
            if _is_path(name):
                _import_file(name)
            else:
                importlib.import_module(name)
        except CommandError:
            raise
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            hint = "; give a module name (mynet, package.module) or the path of a .py file" \
                if isinstance(e, FileNotFoundError) else ""
            raise CommandError(f"--import {name}: {e}{hint}") from None
        except ModuleNotFoundError as e:
            if e.name and (name == e.name or name.startswith(e.name + ".")):  # the module itself, not one it imports
                raise CommandError(f"--import {name}: no module named {e.name!r} found from {os.getcwd()}; give a "
                                   "module name (mynet for ./mynet.py, package.module for a package) and run from "
                                   "the folder that holds it, or give the path of the .py file") from None
            raise CommandError(f"--import {name}: importing it raised {type(e).__name__}: {e}; install what it "
                               "needs or fix the module") from None
        except SyntaxError as e:
            where = f"{e.filename}, line {e.lineno}: " if e.filename else ""
            raise CommandError(f"--import {name}: the module has a syntax error: {where}{e.msg}; fix the "
                               "module") from None
        except Exception as e:
            hint = f"python -c 'import {name}'" if not _is_path(name) else f"python {name}"
            raise CommandError(f"--import {name}: importing it raised {type(e).__name__}: {e}; fix the module "
                               f"({hint} shows where)") from None


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


def _check_runnable(path, info, device="cpu"):
    """``eval`` and ``predict`` run a checkpoint, or a packed file (on ``device``); checked before
    anything else is said about the file (its dataset)."""
    if info["kind"] not in ("checkpoint", "packed"):
        raise CommandError(f"{path} holds weights only (bitnet.save_state_dict), no architecture: load it in Python "
                           "into the model it belongs to (model.load_state_dict(bitnet.load_state_dict(path)))")
    if info["kind"] == "checkpoint" and device != "cpu":
        raise CommandError(f"{path} is a checkpoint; --device {device} runs packed files: convert it first "
                           f"(bitnet convert {path} OUT.h5)")


def _load_any(path, info, device="cpu"):
    """The model in a checkpoint or a packed file (on ``device``; ``_check_runnable`` first), ready for
    inference."""
    import bitnet
    with reading(path):
        return bitnet.load_packed(path, device=device) if info["kind"] == "packed" else bitnet.load(path).eval()


def cmd_convert(args) -> int:
    import os

    import bitnet
    from bitnet.io.packed import same_file
    if same_file(args.input, args.output):  # the packed file would replace the checkpoint: refused before any work
        stem = os.path.splitext(args.input)[0]
        raise CommandError(f"{args.output}: the output is the same file as the input checkpoint {args.input}; "
                           "writing the packed file there would replace the checkpoint (its float weights and "
                           f"training state would be lost); give another output file, e.g. {stem}.packed.h5")
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
    with running(args.file, f"inputs of shape {shape}", expected_input(info, args.input_shape, "--input-shape")):
        bitnet.summary(model, shape, file=out)
        if info["kind"] == "packed":
            packed = bitnet.load_packed(args.file, micro_batch=None)
            print(f"layers on bits in this file: {', '.join(packed.packed_layers) or 'none'}", file=out)
    print(printable(f"{args.file}: {info['kind']} file of {os.path.getsize(args.file)} bytes, model {describe_model(model)}"))
    print(printable(out.getvalue(), newlines=True), end="")
    return 0


def cmd_eval(args) -> int:
    import math

    from bitnet.data import DataLoader
    from bitnet.data.datasets import load_splits, transform_for
    from bitnet.training import evaluate
    info, record = _describe_file(args.file)
    _check_runnable(args.file, info, args.device)
    dataset = choose_dataset(args.file, info, record, args.dataset, args.force, lambda m: warn(args, m))
    model = _load_any(args.file, info, args.device)
    [(x_test, y_test)] = load_splits(dataset, ("test",), args.data_dir, args.download)
    loader = DataLoader((x_test, y_test), args.batch_size, transform=transform_for(dataset))
    what = f"the {dataset} test set (images of shape {DATASET_SHAPES[dataset]})"
    with running(args.file, what, expected_input(info)):
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
    _check_runnable(args.file, info, args.device)
    dataset = choose_dataset(args.file, info, record, args.dataset, args.force, lambda m: warn(args, m))
    shape = tuple(info["input_shape"]) if info["input_shape"] else None
    model = _load_any(args.file, info, args.device)
    x = read_input(args.input, expected=shape)
    if args.limit is not None:
        x = x[:args.limit]
    check_pixels(args.input, x)  # uint8, or finite floats in [0, 1]: what the normalization takes as pixels
    x = transform_for(dataset)(x)
    with no_grad(), running(args.file, f"the images of {args.input} (shape {x.shape[1:]})", expected_input(info)):
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
    cli_train.add_parser(sub)
    _file_parsers(sub)
    from bitnet.bench.cli import add_parser as add_bench
    add_bench(sub)
    return parser


def _prog(args) -> str:
    """``bitnet COMMAND`` (``bitnet bench gemm`` for a benchmark), as the command's own usage line names it."""
    bench = getattr(args, "bench", None)
    return f"bitnet {args.command}" + (f" {bench}" if args.command == "bench" and bench else "")


def _error(args, message, code, newlines=False) -> int:
    rank, prog = getattr(args, "rank_text", ""), _prog(args)
    if args.command == "bench":  # a benchmark's own words name it too ("bench train --device cuda: ..."): once
        message = str(message).removeprefix(prog.removeprefix("bitnet ") + " ")
    print(f"{prog}{rank}: error: {printable(message, newlines)}", file=sys.stderr, flush=True)
    return code


def _command_line_words(message: str) -> str:
    """A GPU error in the command line's words: ``--device cpu``, not the Python API's ``device="cpu"``."""
    return message.replace('device="cpu"', "--device cpu")


def _broken_pipe() -> int:
    """The reader of the output went away (``bitnet predict ... | head -1``): stop quietly, as Unix tools
    do, with the status of a process ended by SIGPIPE (128 + 13); stdout is pointed at the null device
    so that Python's last flush at exit does not fail again."""
    import os
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, sys.stdout.fileno())
        finally:
            os.close(null)
    except (OSError, ValueError, AttributeError):
        pass  # a stdout without a file descriptor (a test's capture): nothing is flushed at exit
    return 141


def main(argv=None) -> int:
    """The ``bitnet`` command: its exit status (0 done, 2 the input, 1 a failed write or out of memory,
    130 interrupted, 141 the output's reader went away)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # before the command ran (building the parser imports the zoo, the data readers)
        print("bitnet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _broken_pipe()


def _main(argv) -> int:
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
        code = args.run(args)
        sys.stdout.flush()  # a reader gone before the last lines: BrokenPipeError here, not at exit
        return code
    except CommandError as exc:
        return _error(args, exc, exc.code)
    except (DatasetNotFoundError, DownloadError) as exc:  # several lines: the folders searched, the mirrors tried
        return _error(args, exc.cli_message, 2, newlines=True)  # worded as command-line options
    except CudaUnavailableError as exc:
        return _error(args, _command_line_words(str(exc)), 2)
    except (DataFormatError, BitnetFileError, FileNotFoundError, TypeError, ValueError) as exc:
        return _error(args, exc, 2)
    except BrokenPipeError:
        return _broken_pipe()
    except OSError as exc:  # e.g. an input file that cannot be read
        return _error(args, f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else exc, 2)
    except MemoryError:
        return _error(args, "out of memory; use smaller inputs or batches (--limit, --batch-size)", 1)
    except KeyboardInterrupt:
        print(f"{_prog(args)}{getattr(args, 'rank_text', '')}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        comm = getattr(args, "comm", None)
        if comm is None or comm.size == 1:
            raise
        return dist.failure(args, comm, exc)  # then main ends every rank


if __name__ == "__main__":
    sys.exit(main())
