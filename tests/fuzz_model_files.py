"""Mutation fuzzing of bitnet model files: every mutated file must load as a valid model or raise
``bitnet.BitnetFileError`` -- never another exception, a crash or a hang.

    python tests/fuzz_model_files.py --cases 10000 --seed 0      # the long run (docs/file-format.md)

Mutations of a valid checkpoint (with optimizer, schedule and RNG state) and a valid packed file
(``lenet-binary``): truncation, flipped bytes (anywhere, and concentrated in the metadata at the start
of the file), structural edits through h5py (missing, extra and retyped datasets, absurd shapes,
edited and deleted attributes, mangled JSON configs, unknown models and arguments, wrong versions)
and size attacks (a dataset in one huge gzip chunk, huge, zero or negative layer and zoo arguments,
sizes that cancel, optimizer state of strings, complex, compound or array dtypes, NaN or negative
moments, bad step counts, hostile param_groups / scheduler / RNG JSON). A checkpoint is loaded with
``bitnet.load``, then its training state with ``bitnet.load_training_state`` and restored into a new
Adam, schedule and generator. Each case runs in a worker process whose address space is limited
(``--memory-mb`` above what it holds after loading the valid files once), so an allocation blow-up
is a MemoryError, which counts as a failure like any exception but ``BitnetFileError``; a worker that
dies (a crash in native code) or does not answer within the time limit counts as a failure, and the
parent starts a new one. With ``--cli-share`` (a quarter of the cases by default) a case goes
through ``bitnet summary``, ``predict`` or ``convert`` instead: it must end in exit 0, or in exit 2
with one message line and no traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

OK, CLEAN_ERROR = "model", "BitnetFileError"


# -- mutations ------------------------------------------------------------------------------------

_DEFLATED_ZEROS = {}


def _deflated_zeros(nbytes):
    """zlib (gzip filter) bytes of ``nbytes`` zero bytes, made once per size."""
    import zlib
    if nbytes not in _DEFLATED_ZEROS:
        out, parts, piece = zlib.compressobj(6), [], bytes(1 << 20)
        for _ in range(nbytes >> 20):
            parts.append(out.compress(piece))
        _DEFLATED_ZEROS[nbytes] = b"".join(parts) + out.flush()
    return _DEFLATED_ZEROS[nbytes]


def _edit_architecture(f, rng, change):
    """Apply ``change(nodes, rng)`` to the decoded architecture attribute; returns its description."""
    import zlib
    arch = json.loads(zlib.decompress(bytes(f.attrs["architecture"])))
    nodes, stack = [], [arch]
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(node.get("children", []))
    desc = change(arch, nodes, rng)
    f.attrs["architecture"] = np.void(zlib.compress(json.dumps(arch).encode()))
    return desc


def _huge_layer(arch, nodes, rng):
    sized = [n for n in nodes if n.get("class") in ("Conv2d", "QConv2d", "Dense", "QDense", "BatchNorm2d",
                                                    "BatchNorm1d", "MaxPool2d")]
    node = sized[int(rng.integers(len(sized)))]
    names = [k for k in node["config"] if k in ("in_channels", "out_channels", "kernel_size", "stride", "padding",
                                                "dilation", "groups", "in_features", "out_features",
                                                "num_features")]
    name = names[int(rng.integers(len(names)))]
    value = [0, -1, -(2 ** 16), 2 ** 12, 2 ** 16, 2 ** 24, 3 ** 15][int(rng.integers(7))]
    node["config"][name] = [value, value] if isinstance(node["config"][name], list) else value
    return f"architecture {node['class']}.{name} = {value}"


def _cancelling_layers(arch, nodes, rng):
    n = [2 ** 16, 2 ** 14, 2 ** 20][int(rng.integers(3))]
    arch.setdefault("children", []).extend([
        {"name": "big", "class": "Dense", "config": {"in_features": n, "out_features": n, "bias": True}},
        {"name": "neg", "class": "Dense", "config": {"in_features": -n, "out_features": n, "bias": True}}])
    return f"Dense({n}, {n}) + Dense(-{n}, {n})"


def _state_attack(f, rng):
    """A hostile optimizer state dataset or training JSON (checkpoints)."""
    state = f["training/optimizer/state"]
    index = sorted(state)[int(rng.integers(len(state)))]
    entry = state[index]
    name = sorted(entry)[int(rng.integers(len(entry)))]
    shape = entry[name].shape
    kind = int(rng.integers(12))
    if kind < 8:
        dtype, data = [("S4096", None), (np.complex64, None), ([("a", "f4"), ("b", "i4")], None),
                       (np.dtype(("f4", (1024,))), None), (np.float32, np.nan), (np.float32, -1.0),
                       (np.float64, np.inf), (np.int64, -1)][kind]
        del entry[name]
        if data is None:
            entry.create_dataset(name, shape=shape, dtype=dtype)
        else:
            entry.create_dataset(name, data=np.full(shape, data, dtype))
        return f"optimizer state {index}/{name}: {dtype} {data}"
    train, og = f["training"], f["training/optimizer"]
    if kind == 8:
        og.attrs["param_groups"] = np.bytes_(json.dumps(json.loads(og.attrs["param_groups"])[0]))
        return "param_groups an object"
    if kind == 9:
        sched = json.loads(train.attrs["scheduler"])
        key = ["last_epoch", "total_steps", "warmup_steps", "base_lrs", "type"][int(rng.integers(5))]
        sched[key] = [2 ** 200, -1, 0, [1.0, 2.0], "StepLR", None, "x"][int(rng.integers(7))]
        train.attrs["scheduler"] = np.bytes_(json.dumps(sched).replace("1606938044258990275541962092341162602522202993782"
                                                                        "792835301376", "1e400"))
        return f"scheduler {key} = {sched[key]!r}"
    if kind == 10:
        r = json.loads(train.attrs["rng"])
        r["state"]["state"] = [2 ** 200, -1, 1.5, "x", None][int(rng.integers(5))]
        train.attrs["rng"] = np.bytes_(json.dumps(r))
        return f"rng state {r['state']['state']!r}"
    del entry[name]
    return f"missing optimizer state {index}/{name}"


def _h5_edit(path, rng):
    """One structural edit through h5py; returns its description."""
    import h5py
    with h5py.File(path, "r+") as f:
        keys = sorted(f["weights"]) if isinstance(f.get("weights"), h5py.Group) else []
        choice = int(rng.integers(22))
        key = keys[int(rng.integers(len(keys)))] if keys else None
        arrays = [k for k in keys if isinstance(f["weights"][k], h5py.Dataset) and f["weights"][k].ndim]
        if choice == 16 and arrays:
            # the dataset's own values fit in a few MB; its one gzip chunk claims 64 MiB to 1 GiB
            key = arrays[int(rng.integers(len(arrays)))]
            ds = f["weights"][key]
            shape, dtype = ds.shape, ds.dtype
            del f["weights"][key]
            row = int(np.prod(shape[1:])) * dtype.itemsize
            rows = max(1, (1 << int(rng.integers(26, 31))) // row)
            new = f["weights"].create_dataset(key, shape=shape, dtype=dtype, maxshape=(None,) + shape[1:],
                                              chunks=(rows,) + shape[1:], compression="gzip")
            new.id.write_direct_chunk((0,) * len(shape), _deflated_zeros(rows * row))
            return f"{key} in one {rows * row}-byte gzip chunk"
        if choice == 17 and "architecture" in f.attrs:
            return _edit_architecture(f, rng, _huge_layer)
        if choice == 18 and "architecture" in f.attrs:
            return _edit_architecture(f, rng, _cancelling_layers)
        if choice == 19:
            value = [150, 2 ** 16, 2 ** 20, 0, -8][int(rng.integers(5))]
            arg = ["image_size", "num_classes", "in_channels"][int(rng.integers(3))]
            f.attrs["format_version"] = 1
            if "architecture" in f.attrs:
                del f.attrs["architecture"]
            f.attrs["config"] = np.bytes_(json.dumps({"model": "lenet-binary", "kwargs": {arg: value}}))
            return f"version 1 zoo {arg}={value}"
        if choice == 20:
            cfg = json.loads(f.attrs["config"])
            cfg["input_shape"] = [int(v) for v in rng.choice([1, 3, 2 ** 12, 2 ** 16, 2 ** 24], 3)]
            f.attrs["config"] = np.bytes_(json.dumps(cfg))
            return f"input_shape {cfg['input_shape']}"
        if choice == 21 and "training/optimizer/state" in f:
            return _state_attack(f, rng)
        if choice == 0 and key:
            del f["weights"][key]
            return f"delete {key}"
        if choice == 1:
            f["weights"].create_dataset(f"extra{int(rng.integers(100))}", data=rng.standard_normal(3))
            return "extra key"
        if choice == 2 and key:
            dtype = [np.float64, np.int32, np.uint8, np.float16, np.complex64, "S4"][int(rng.integers(6))]
            shape = f["weights"][key].shape
            del f["weights"][key]
            f["weights"].create_dataset(key, data=np.zeros(shape, dtype))
            return f"retype {key} {dtype}"
        if choice == 3 and key:
            shape = tuple(int(s) for s in rng.integers(1, 10 ** int(rng.integers(1, 7)), int(rng.integers(0, 5))))
            del f["weights"][key]
            f["weights"].create_dataset(key, shape=shape, dtype="f4", chunks=True if shape else None)
            return f"reshape {key} {shape}"
        if choice == 4:
            attr = ["format", "format_version", "config", "kind", "created"][int(rng.integers(5))]
            if attr in f.attrs:
                del f.attrs[attr]
            return f"delete attr {attr}"
        if choice == 5:
            attr = ["format", "format_version", "kind"][int(rng.integers(3))]
            f.attrs[attr] = [2, "x", -1, 1.5, np.arange(3), "checkpoint", "packed"][int(rng.integers(7))]
            return f"set attr {attr}"
        if choice == 6:
            text = f.attrs.get("config", b"")
            text = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
            if text:
                i = int(rng.integers(len(text)))
                text = text[:i] + chr(int(rng.integers(32, 127))) + text[i + 1:]
            f.attrs["config"] = np.bytes_(text.encode("utf-8", "replace")) if rng.random() < 0.9 else text
            return "mangle config"
        if choice == 7:
            zoo = {"model": ["lenet", "resnet18", "os.system", "", 5, None][int(rng.integers(6))],
                   "kwargs": {"num_classes": int(rng.choice([10, 0, -3, 10 ** 12, 2 ** 40]))}}
            if rng.random() < 0.3:
                zoo["kwargs"]["evil"] = "__import__('os')"
            cfg = {"zoo": zoo} if rng.random() < 0.7 else zoo  # version 2's shape, or version 1's
            f.attrs["config"] = np.bytes_(json.dumps(cfg))  # a fixed-length string, as bitnet writes
            return f"config {cfg}"
        if choice in (14, 15) and "architecture" in f.attrs:
            def change(arch, nodes, rng):  # one node's argument, or its class
                node = nodes[int(rng.integers(len(nodes)))]
                if choice == 14 and node.get("config"):
                    name = sorted(node["config"])[int(rng.integers(len(node["config"])))]
                    node["config"][name] = [0, -1, 10 ** 12, 2 ** 20, "x", None, [1] * 5, {"a": 1}, 1.5][
                        int(rng.integers(9))]
                    return f"architecture {node['class']}.{name} = {node['config'][name]!r}"
                node["class"] = ["os.system", "Dense", "Sequential", "ReLU", "", 3][int(rng.integers(6))]
                return f"architecture class {node['class']!r}"
            return _edit_architecture(f, rng, change)
        if choice == 8 and key:
            ds = f["weights"][key]
            if ds.dtype.kind == "f" and ds.size:
                flat = ds[()].reshape(-1)
                flat[int(rng.integers(flat.size))] = [np.nan, np.inf, -np.inf, 1e30][int(rng.integers(4))]
                ds[...] = flat.reshape(ds.shape)
                return f"non-finite in {key}"
            return "noop"
        if choice == 9:
            del f["weights"]
            if rng.random() < 0.5:
                f.create_dataset("weights", data=np.zeros(2))
            return "weights group"
        if choice == 10 and "training" in f:
            del f["training"]
            return "delete training"
        if choice == 11 and key:
            ds = f["weights"][key]
            del f["weights"][key]
            f["weights"].create_group(key)
            return f"group instead of {key}"
        if choice == 12 and key:
            # links and storage that would make a reader open other files
            shape = f["weights"][key].shape
            del f["weights"][key]
            kind = int(rng.integers(4))
            if kind == 0:
                f["weights"][key] = h5py.ExternalLink(str(path), "/weights/" + keys[0])
            elif kind == 1:
                f["weights"][key] = h5py.SoftLink("/weights/" + keys[0])
            elif kind == 2:
                f["weights"].create_dataset(key, shape=shape, dtype="f4", external=[(str(path), 0, h5py.h5f.UNLIMITED)])
            else:
                layout = h5py.VirtualLayout(shape=shape, dtype="f4")
                layout[...] = h5py.VirtualSource(str(path), "/weights/" + keys[0], shape=shape)
                f["weights"].create_virtual_dataset(key, layout)
            return f"link or external storage {kind} for {key}"
        if choice == 13 and key:
            data = f["weights"][key][()]
            del f["weights"][key]
            chunks = None if data.ndim == 0 else True
            f["weights"].create_dataset(key, data=data, chunks=chunks, compression="gzip" if chunks else None,
                                        shuffle=bool(chunks))
            return f"gzip {key} (a valid file)"
    return "noop"


def mutate(src: bytes, path: str, rng) -> str:
    """Write a mutation of the file bytes ``src`` to ``path``; returns its description."""
    kind = int(rng.integers(4))
    data = bytearray(src)
    if kind == 0:
        cut = int(rng.integers(len(data)))
        data = data[:cut]
        desc = f"truncate at {cut}"
    elif kind in (1, 2):
        n = int(rng.integers(1, 9))
        region = len(data) if kind == 1 else min(len(data), 8192)
        for _ in range(n):
            i = int(rng.integers(region))
            data[i] ^= 1 << int(rng.integers(8))
        desc = f"flip {n} bits in the first {region} bytes"
    else:
        with open(path, "wb") as f:
            f.write(data)
        try:
            return _h5_edit(path, rng)
        except Exception as e:  # the edit itself failed on a strange file: keep the file as is
            return f"edit failed ({type(e).__name__})"
    with open(path, "wb") as f:
        f.write(data)
    return desc


# -- the worker: loads files, answers with the outcome ---------------------------------------------

def load_case(path, loader):
    """Load a file as the fuzzer does: a packed file with ``load_packed``; a checkpoint with ``load``,
    then its training state, restored into a new Adam, schedule and generator of the kinds it names."""
    import bitnet
    if loader == "packed":
        return bitnet.load_packed(path)
    model = bitnet.load(path)
    state = bitnet.load_training_state(path)
    if state.optimizer is not None and state.optimizer_class == "Adam":
        opt = bitnet.optim.Adam(model.parameters())
        sched = bitnet.optim.WarmupCosine(opt, 2, 10) if state.scheduler is not None else None
        gen = np.random.Generator(getattr(np.random, state.rng["bit_generator"])()) if state.rng else None
        state.restore(opt, gen, sched)
    return model


# The command-line path: a mutated file through these commands must end in exit 0, or exit 2 with one
# message line on stderr (warning lines aside) and no traceback (docs/cli.md).
CLI_COMMANDS = {"checkpoint": ("summary", "predict", "convert"), "packed": ("summary", "predict")}


def cli_case(path, command):
    """Run ``bitnet COMMAND`` on ``path`` in this process: OK, CLEAN_ERROR or what went wrong."""
    import contextlib
    import io

    from bitnet.cli import main
    folder = os.path.dirname(path)
    args = {"summary": ["summary", path],
            "predict": ["predict", path, os.path.join(folder, "images.npy")],
            "convert": ["convert", path, os.path.join(folder, "converted.h5")]}[command]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(args)
        except SystemExit as e:  # argparse
            rc = e.code
    text = err.getvalue()
    lines = [ln for ln in text.splitlines() if ln.strip() and " warning: " not in ln]
    if rc == 0:
        return OK
    if rc == 2 and len(lines) == 1 and "Traceback" not in text:
        return CLEAN_ERROR
    return f"bitnet {command}: exit {rc}, stderr {text[-300:]!r}"


def _limit_memory(extra_mb):
    """Limit the address space to what the process holds now plus ``extra_mb``."""
    import resource
    held = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (held + (extra_mb << 20), resource.RLIM_INFINITY))


def _peak_rss_mb(reset=False):
    """The process's peak resident memory (VmHWM) in MB, None where Linux does not tell; ``reset``
    starts a new peak (``/proc/self/clear_refs``)."""
    try:
        if reset:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        return None


def worker(warm=(), memory_mb=None) -> None:
    """Answer each ``path loader`` line with the outcome; with ``memory_mb``, the address space is limited
    (a hard stop) and a case whose peak resident memory grows more than ``memory_mb`` / 6 MB above
    what the process held before it is a failure, whatever it raised (HDF5 reports an allocation it
    could not make as a damaged dataset, which would otherwise pass as a clean error)."""
    import bitnet
    for path, loader in warm:  # compile and import everything a valid file needs, then limit
        if loader.startswith("cli-"):
            assert cli_case(path, loader[4:]) == OK, f"the valid file fails bitnet {loader[4:]}"
        else:
            load_case(path, loader)
    if memory_mb:
        _limit_memory(memory_mb)
    for line in sys.stdin:
        path, loader = line.split()
        before = _peak_rss_mb(reset=True) if memory_mb else None
        try:
            if loader.startswith("cli-"):
                out = cli_case(path, loader[4:])
            else:
                load_case(path, loader)
                out = OK
        except bitnet.BitnetFileError:
            out = CLEAN_ERROR
        except Exception as e:  # noqa: BLE001 - exactly what the fuzzer reports
            out = f"{type(e).__name__}: {str(e)[:200]}"
        peak = _peak_rss_mb() if before is not None else None
        if peak is not None and peak - before > memory_mb // 6:
            out = f"memory: {peak - before} MB more at the peak than before the case ({out})"
        print(out, flush=True)


class Worker:
    def __init__(self, warm=(), memory_mb=None):
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        args = [sys.executable, __file__, "--worker"] + [f"{p}:{k}" for p, k in warm]
        args += ["--memory-mb", str(memory_mb)] if memory_mb else []
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def ask(self, path, loader, timeout):
        import selectors
        self.proc.stdin.write(f"{path} {loader}\n")
        self.proc.stdin.flush()
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            self.proc.kill()
            return f"hang (> {timeout} s)"
        line = self.proc.stdout.readline()
        if not line:
            return f"crash (exit {self.proc.wait()})"
        return line.strip()

    def close(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except Exception:  # noqa: BLE001
            self.proc.kill()


def make_sources(folder):
    """A valid checkpoint (with optimizer state after one step, a schedule and an RNG) and a valid
    packed file of lenet-binary."""
    import bitnet
    from bitnet import functional as F
    model = bitnet.models.get("lenet-binary", seed=0)
    opt = bitnet.optim.Adam(model.parameters())
    sched = bitnet.optim.WarmupCosine(opt, 2, 10)
    gen = np.random.default_rng(0)
    x = bitnet.Tensor(gen.standard_normal((2, 1, 28, 28)).astype(np.float32))
    F.cross_entropy(model(x), bitnet.Tensor(np.array([1, 2]))).backward()
    opt.step()
    sched.step()
    ckpt, packed = os.path.join(folder, "ckpt.h5"), os.path.join(folder, "packed.h5")
    bitnet.save(model, ckpt, optimizer=opt, epoch=1, rng=gen, scheduler=sched)
    bitnet.convert(model, packed)
    return [(open(ckpt, "rb").read(), "checkpoint", ckpt), (open(packed, "rb").read(), "packed", packed)]


def run(cases: int, seed: int = 0, timeout: float = 60.0, log=print, keep=None, memory_mb=1536,
        cli_share: float = 0.0) -> dict:
    """Run ``cases`` mutations, each loaded by a worker limited to ``memory_mb`` MB of address space
    beyond what it needs for the valid files (None: no limit); a ``cli_share`` of them go through a
    command of ``bitnet`` instead (``CLI_COMMANDS``); returns {"cases", "models", "clean_errors",
    "failures": [...]}."""
    rng = np.random.default_rng(seed)
    result = {"cases": 0, "models": 0, "clean_errors": 0, "failures": []}
    with tempfile.TemporaryDirectory() as folder:
        sources = make_sources(folder)
        warm = [(p, kind) for _, kind, p in sources]
        if cli_share:
            np.save(os.path.join(folder, "images.npy"), np.zeros((2, 28, 28), np.uint8))
            warm += [(p, "cli-" + c) for _, kind, p in sources for c in CLI_COMMANDS[kind]]
        w = Worker(warm, memory_mb)
        start = time.time()
        try:
            for i in range(cases):
                src, loader, _ = sources[i % len(sources)]
                path = os.path.join(folder, f"case{i % 2}.h5")
                desc = mutate(src, path, rng)
                if cli_share and rng.random() < cli_share:
                    commands = CLI_COMMANDS[loader]
                    loader = "cli-" + commands[int(rng.integers(len(commands)))]
                out = w.ask(path, loader, timeout)
                result["cases"] += 1
                if out == OK:
                    result["models"] += 1
                elif out == CLEAN_ERROR:
                    result["clean_errors"] += 1
                else:
                    result["failures"].append(f"case {i} ({loader}, {desc}): {out}")
                    if keep:
                        os.makedirs(keep, exist_ok=True)
                        with open(path, "rb") as fsrc, open(os.path.join(keep, f"case{i}-{loader}.h5"), "wb") as fdst:
                            fdst.write(fsrc.read())
                    if out.startswith(("crash", "hang")):
                        w = Worker(warm, memory_mb)
                if log and (i + 1) % 500 == 0:
                    log(f"{i + 1}/{cases} cases, {time.time() - start:.0f} s: {result['models']} valid models, "
                        f"{result['clean_errors']} clean errors, {len(result['failures'])} failures")
        finally:
            w.close()
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per case before it counts as a hang")
    p.add_argument("--keep", default=None, help="copy every failing case's file into this folder")
    p.add_argument("--memory-mb", type=int, default=1536,
                   help="address space each worker may take beyond what the valid files need (0: no limit)")
    p.add_argument("--cli-share", type=float, default=0.25,
                   help="the share of cases run through a bitnet command (summary, predict, convert) instead of "
                        "the Python loaders")
    p.add_argument("--worker", nargs="*", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        worker([tuple(w.rsplit(":", 1)) for w in args.worker], args.memory_mb or None)
        return 0
    res = run(args.cases, args.seed, args.timeout, keep=args.keep, memory_mb=args.memory_mb or None,
              cli_share=args.cli_share)
    print(f"{res['cases']} cases: {res['models']} loaded as valid models, {res['clean_errors']} clean "
          f"BitnetFileErrors, {len(res['failures'])} failures")
    for f in res["failures"][:50]:
        print("  FAIL", f)
    return 1 if res["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
