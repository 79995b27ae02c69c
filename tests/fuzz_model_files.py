"""Mutation fuzzing of bitnet model files: every mutated file must load as a valid model or raise
``bitnet.BitnetFileError`` -- never another exception, a crash or a hang.

    python tests/fuzz_model_files.py --cases 10000 --seed 0      # the long run (docs/file-format.md)

Mutations of a valid checkpoint and a valid packed file (``lenet-binary``): truncation, flipped
bytes (anywhere, and concentrated in the metadata at the start of the file), and structural edits
through h5py (missing, extra and retyped datasets, absurd shapes, edited and deleted attributes,
mangled JSON configs, unknown models and arguments, wrong versions). Each case runs in a worker
process; a worker that dies (a crash in native code) or does not answer within the time limit
counts as a failure, and the parent starts a new one.
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

def _h5_edit(path, rng):
    """One structural edit through h5py; returns its description."""
    import h5py
    with h5py.File(path, "r+") as f:
        keys = sorted(f["weights"]) if isinstance(f.get("weights"), h5py.Group) else []
        choice = int(rng.integers(16))
        key = keys[int(rng.integers(len(keys)))] if keys else None
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
            text = str(f.attrs.get("config", ""))
            if text:
                i = int(rng.integers(len(text)))
                text = text[:i] + chr(int(rng.integers(32, 127))) + text[i + 1:]
            f.attrs["config"] = text
            return "mangle config"
        if choice == 7:
            zoo = {"model": ["lenet", "resnet18", "os.system", "", 5, None][int(rng.integers(6))],
                   "kwargs": {"num_classes": int(rng.choice([10, 0, -3, 10 ** 12, 2 ** 40]))}}
            if rng.random() < 0.3:
                zoo["kwargs"]["evil"] = "__import__('os')"
            cfg = {"zoo": zoo} if rng.random() < 0.7 else zoo  # version 2's shape, or version 1's
            f.attrs["config"] = json.dumps(cfg)
            return f"config {cfg}"
        if choice in (14, 15) and "architecture" in f.attrs:
            import zlib
            arch = json.loads(zlib.decompress(bytes(f.attrs["architecture"])))
            nodes, stack = [], [arch]
            while stack:
                node = stack.pop()
                nodes.append(node)
                stack.extend(node.get("children", []))
            node = nodes[int(rng.integers(len(nodes)))]
            if choice == 14 and node.get("config"):
                name = sorted(node["config"])[int(rng.integers(len(node["config"])))]
                node["config"][name] = [0, -1, 10 ** 12, 2 ** 20, "x", None, [1] * 5, {"a": 1}, 1.5][int(rng.integers(9))]
                desc = f"architecture {node['class']}.{name} = {node['config'][name]!r}"
            else:
                node["class"] = ["os.system", "Dense", "Sequential", "ReLU", "", 3][int(rng.integers(6))]
                desc = f"architecture class {node['class']!r}"
            f.attrs["architecture"] = np.void(zlib.compress(json.dumps(arch).encode()))
            return desc
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

def worker() -> None:
    import bitnet
    for line in sys.stdin:
        path, loader = line.split()
        try:
            (bitnet.load_packed if loader == "packed" else bitnet.load)(path)
            out = OK
        except bitnet.BitnetFileError:
            out = CLEAN_ERROR
        except Exception as e:  # noqa: BLE001 - exactly what the fuzzer reports
            out = f"{type(e).__name__}: {str(e)[:200]}"
        print(out, flush=True)


class Worker:
    def __init__(self):
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)

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
    """A valid checkpoint (with training state) and a valid packed file of lenet-binary."""
    import bitnet
    model = bitnet.models.get("lenet-binary", seed=0)
    opt = bitnet.optim.Adam(model.parameters())
    ckpt, packed = os.path.join(folder, "ckpt.h5"), os.path.join(folder, "packed.h5")
    bitnet.save(model, ckpt, optimizer=opt, epoch=1, rng=np.random.default_rng(0))
    bitnet.convert(model, packed)
    return [(open(ckpt, "rb").read(), "checkpoint"), (open(packed, "rb").read(), "packed")]


def run(cases: int, seed: int = 0, timeout: float = 60.0, log=print, keep=None) -> dict:
    """Run ``cases`` mutations; returns {"cases", "models", "clean_errors", "failures": [...]}."""
    rng = np.random.default_rng(seed)
    result = {"cases": 0, "models": 0, "clean_errors": 0, "failures": []}
    with tempfile.TemporaryDirectory() as folder:
        sources = make_sources(folder)
        w = Worker()
        start = time.time()
        try:
            for i in range(cases):
                src, loader = sources[i % len(sources)]
                path = os.path.join(folder, f"case{i % 2}.h5")
                desc = mutate(src, path, rng)
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
                        w = Worker()
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
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker()
        return 0
    res = run(args.cases, args.seed, args.timeout, keep=args.keep)
    print(f"{res['cases']} cases: {res['models']} loaded as valid models, {res['clean_errors']} clean "
          f"BitnetFileErrors, {len(res['failures'])} failures")
    for f in res["failures"][:50]:
        print("  FAIL", f)
    return 1 if res["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
