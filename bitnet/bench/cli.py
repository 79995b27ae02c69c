"""``bitnet bench`` subcommands.

Everything a benchmark's options say is checked before it runs (``_checked``): ``--threads`` against
the threads Numba has on this machine, ``--json`` and ``--plot`` as destinations (their folder exists
and takes files; ``--plot``'s extension a format matplotlib writes). Errors name the benchmark:
``bitnet bench gemm: error: ...``."""
from __future__ import annotations

import argparse
import json
import os

from bitnet.cli_options import BATCH, file_name, integer, number

_ROUNDS = integer(1, 10_000, "rounds")
_REPEATS = integer(1, 100_000, "timed calls")
_STEPS = integer(1, 100_000, "steps per round")
_BUSY = integer(0, 256, "busy-looping processes")
_WARMUP = integer(0, 100_000, "warm-up steps")
_THREADS = integer(1, None, "threads")  # at most Numba's threads on this machine: _check_threads
_GBIT = number(0.0, 1e6, low_open=True, what="Gbit/s")
_LATENCY = number(0.0, 1e7, what="microseconds")
_JSON = file_name("the records to write")


def _counts(what: str, example: str, high=None):
    """An argparse ``type``: whole numbers >= 1 (at most ``high``) separated by commas, e.g. ``"1,2"`` ->
    ``[1, 2]`` (repeats dropped); ``what`` names them in the error ("thread counts", "process counts")."""
    def parse(text: str) -> list:
        try:
            counts = [int(t) for t in text.split(",") if t.strip()]
        except ValueError:
            counts = []
        if not counts or min(counts) < 1 or (high is not None and max(counts) > high):
            bound = ">= 1" if high is None else f"from 1 to {high}"
            raise argparse.ArgumentTypeError(f"expected {what} {bound} separated by commas, e.g. {example}; "
                                             f"got {text!r}")
        return list(dict.fromkeys(counts))
    parse.__name__ = what
    return parse


def _python(text: str) -> str:
    """An argparse ``type``: an executable file (the interpreter of ``--larq-python``)."""
    if not (os.path.isfile(text) and os.access(text, os.X_OK)):
        raise argparse.ArgumentTypeError(f"expected an executable Python interpreter, e.g. venv/bin/python; "
                                         f"got {text!r}, which is not an executable file")
    return text


#: ``--threads`` of ``bench model`` and ``bench train`` (at most Numba's threads: ``_check_threads``);
#: ``--processes`` of ``bench distributed``.
thread_counts = _counts("thread counts", "1,2")
process_counts = _counts("process counts", "2 or 2,4", high=4096)


def _most_threads() -> int:
    import numba
    return numba.config.NUMBA_NUM_THREADS


def _check_threads(requested) -> None:
    """``--threads`` (a count or a list) at most the threads Numba has on this machine."""
    if requested is None:
        return
    most = _most_threads()
    counts = requested if isinstance(requested, list) else [requested]
    too_many = [t for t in counts if t > most]
    if too_many:
        raise ValueError(f"--threads {','.join(map(str, too_many))}: expected at most {most}, the threads Numba has "
                         f"on this machine ({os.cpu_count()} cores; NUMBA_NUM_THREADS={most}); give --threads "
                         f"{most} or fewer")


def _threads_list(requested) -> list:
    """The thread counts to run: as given, else 1 and the machine's count; each at most what Numba
    allows (``NUMBA_NUM_THREADS``)."""
    most = _most_threads()
    if requested is None:
        return list(dict.fromkeys([1, min(most, os.cpu_count() or 1)]))
    _check_threads(requested)
    return requested


def _check_plot(plot) -> None:
    """``bench gemm --plot FILE``: matplotlib installed, a format it writes (the extension), a destination
    that takes files; before the benchmark runs."""
    from bitnet.cli_files import CommandError, check_destination
    from bitnet.plotting import needs_matplotlib
    needs_matplotlib("bitnet bench gemm --plot")
    from matplotlib.backend_bases import FigureCanvasBase
    formats = FigureCanvasBase.get_supported_filetypes()
    ext = os.path.splitext(plot)[1].lower().lstrip(".")
    if ext not in formats:
        found = f"a .{ext} file" if ext else "a file name without an extension"
        raise CommandError(f"--plot {plot}: {found}; expected a file type matplotlib writes, chosen by the extension: "
                           + ", ".join("." + f for f in sorted(formats)) + f" (e.g. {os.path.splitext(plot)[0]}.png)")
    check_destination(plot, "--plot")


def _checked(cmd):
    """``cmd`` with its options checked first (``--threads``, ``--json``, ``--plot``): nothing is timed
    before they are found good."""
    def run(args):
        from bitnet.cli_files import check_destination
        if getattr(args, "device", "cpu") != "cuda":
            _check_threads(getattr(args, "threads", None))
        if getattr(args, "plot", None):
            _check_plot(args.plot)
        if getattr(args, "json", None):
            check_destination(args.json, "--json")
        return cmd(args)
    run.__name__ = cmd.__name__
    return run


def _add_busy(p):
    p.add_argument("--busy", type=_BUSY, default=0, metavar="N",
                   help="run N busy-looping processes while timing (load of a shared machine); default 0")


def add_parser(sub):
    p = sub.add_parser("bench", help="benchmarks that print ratios measured in one run")
    bsub = p.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    t = bsub.add_parser("train", help="training time per step and epoch vs PyTorch and Larq (where installed)")
    t.add_argument("--model", choices=("lenet-binary", "resnet18-binary", "lenet"), default=None,
                   help="default lenet-binary; with --device cuda: resnet18-binary and lenet-binary")
    t.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: images per second on one GPU, bitnet vs PyTorch fp32 and bf16 autocast with sign STEs "
                        "(NUMBA_ENABLE_CUDASIM=1: a slow smoke test on the CPU emulation)")
    t.add_argument("--batch-size", type=BATCH, default=None,
                   help="default 128 (lenet-binary, lenet), 64 (resnet18-binary; 256 with --device cuda)")
    most = _most_threads()
    t.add_argument("--threads", type=thread_counts, default=None,
                   help=f"thread counts, e.g. 1,2, each from 1 to {most} (Numba's threads on this machine): the whole "
                        "comparison for each (default: 1 and all cores; CPU only)")
    t.add_argument("--rounds", type=_ROUNDS, default=5)
    t.add_argument("--steps", type=_STEPS, default=None,
                   help="steps per round per framework (default 20; 5 for resnet18-binary on the CPU)")
    t.add_argument("--warmup", type=_WARMUP, default=None,
                   help="untimed steps per framework before timing (--device cuda only; default 3)")
    t.add_argument("--data-dir", default=None)
    t.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    t.add_argument("--no-larq", action="store_true", help="skip Larq")
    t.add_argument("--larq-python", default=None, type=_python, metavar="PYTHON",
                   help="run the Larq worker under this interpreter (one with tensorflow-cpu, tf-keras, larq and "
                        "bitnet installed, e.g. a virtual environment's bin/python: Larq needs NumPy < 2)")
    _add_busy(t)
    t.add_argument("--json", default=None, type=_JSON, help="write the records to this file")
    t.set_defaults(run=_checked(cmd_train))
    d = bsub.add_parser("distributed", help="data-parallel training steps on 1 and N processes (mpiexec): time per "
                        "step, share in allreduce, and a ring-allreduce estimate for 8 and 64 machines")
    d.add_argument("--model", choices=("lenet-binary", "lenet", "resnet18-binary"), default="lenet-binary")
    d.add_argument("--batch-size", type=BATCH, default=128, help="the global batch (default 128)")
    d.add_argument("--processes", type=process_counts, default=[2],
                   help="process counts besides 1, e.g. 2 or 2,4 (default 2)")
    d.add_argument("--rounds", type=_ROUNDS, default=5)
    d.add_argument("--steps", type=_STEPS, default=10, help="steps per round (default 10)")
    d.add_argument("--bandwidth-gbit", type=_GBIT, default=10.0,
                   help="link bandwidth of the cluster estimate in Gbit/s (default 10: 10 Gigabit Ethernet)")
    d.add_argument("--latency-us", type=_LATENCY, default=20.0,
                   help="per-message latency of the cluster estimate in microseconds (default 20: TCP over Ethernet)")
    d.add_argument("--json", default=None, type=_JSON, help="write the records to this file")
    d.set_defaults(run=_checked(cmd_distributed))
    for name, helptext in (("gemm", "XNOR-popcount GEMM vs NumPy float32 GEMM (BMXNet paper sizes, squares)"),
                           ("conv", "one binary convolution layer from a float input vs float im2col + GEMM"),
                           ("model", "packed lenet-binary / resnet18-binary inference vs float, PyTorch, ONNX Runtime, "
                                     "the Larq Compute Engine"),
                           ("train-bits", "binary networks' training step with the forward on bits vs in float")):
        k = bsub.add_parser(name, help=helptext)
        k.add_argument("--rounds", type=_ROUNDS, default=3, help="alternating rounds (default 3)")
        k.add_argument("--repeats", type=_REPEATS, default=3, help="timed calls per method per round (default 3)")
        if name == "model":
            k.add_argument("--threads", type=thread_counts, default=None,
                           help=f"thread counts for every engine, e.g. 1,2, each from 1 to {most} (Numba's threads on "
                                "this machine): the whole comparison for each (default: 1 and all of Numba's)")
        else:
            k.add_argument("--threads", type=_THREADS, default=None, help="threads for bitnet, BLAS and torch, from 1 "
                           f"to {most} (Numba's threads on this machine; default: all of them)")
        k.add_argument("--quick", action="store_true", help="one small case only (a smoke test)")
        k.add_argument("--json", default=None, type=_JSON, help="write the records to this file (checked before "
                       "the benchmark runs)")
        if name == "model":
            k.add_argument("--no-torch", action="store_true", help="skip the PyTorch column")
            k.add_argument("--no-ort", action="store_true", help="skip the ONNX Runtime columns")
            k.add_argument("--no-lce", action="store_true", help="skip the Larq Compute Engine column")
            k.add_argument("--ort-int8", choices=("u8s8", "s8s8"), default="u8s8",
                           help="ONNX Runtime int8 activations: uint8 (default, the faster here) or int8")
            k.add_argument("--data-dir", default=None, help="MNIST for the int8 calibration of lenet-binary")
            k.add_argument("--model", action="append", choices=("lenet-binary", "resnet18-binary"),
                           help="only this network (repeat for several; default: both)")
        if name in ("model", "train-bits"):
            _add_busy(k)
        if name == "gemm":
            k.add_argument("--plot", default=None, metavar="FILE", type=file_name("the figure to draw"),
                           help="also draw the speed-up against C (the BMXNet paper's figure) to FILE (.png, .svg, "
                                ".pdf; needs matplotlib)")
        if name in ("gemm", "model"):
            k.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                           help="cuda: the GPU kernels vs cuBLAS / PyTorch on the GPU, timed with CUDA events")
        k.set_defaults(run=_checked(cmd_kernels), which=name)


def _write_json(path, records) -> None:
    """The benchmark's records as JSON at ``path`` (nothing when None; its destination was checked before
    the benchmark ran, a write that still fails is one message, exit status 1)."""
    if path:
        from bitnet.cli_files import writing
        with writing(path, "the records to", code=1, hint="the table above has the results"):
            with open(path, "w") as f:
                json.dump(records, f, indent=2)


def cmd_train(args) -> int:
    if args.device == "cuda":
        return cmd_train_gpu(args)
    if args.warmup is not None:
        raise ValueError("--warmup applies to --device cuda only (the CPU workers run 3 warm-up steps)")
    from bitnet.bench import train
    if args.no_larq and args.larq_python:
        raise ValueError("--larq-python runs the Larq worker, --no-larq skips it: give one of them")
    frameworks = [f for f in train.default_frameworks(args.larq_python)
                  if not (f == "torch" and args.no_torch or f == "larq" and args.no_larq)]
    if "larq" not in frameworks and not args.no_larq:
        from bitnet.bench import larq_models
        print(f"Larq not measured: {larq_models.missing()}; or pass --larq-python", flush=True)
    threads = _threads_list(args.threads)
    records = train.run(args.model or "lenet-binary", args.batch_size, threads, args.rounds, args.steps,
                        args.data_dir, frameworks, args.busy, larq_python=args.larq_python)
    _write_json(args.json, records)
    return 0


def cmd_train_gpu(args) -> int:
    """``bench train --device cuda`` (``bitnet.bench.train_gpu``)."""
    from bitnet.bench import train_gpu
    if args.threads is not None or args.busy:
        raise ValueError("--threads and --busy apply to the CPU benchmark only, not to --device cuda")
    if args.model == "lenet":
        raise ValueError("--device cuda benchmarks the binary networks: --model resnet18-binary or lenet-binary")
    networks = (args.model,) if args.model else train_gpu.NETWORKS
    warmup = train_gpu.WARMUP if args.warmup is None else args.warmup
    records = train_gpu.run(networks, args.batch_size, args.rounds, args.steps, warmup, args.data_dir, args.no_torch)
    _write_json(args.json, records)
    return 0


def cmd_distributed(args) -> int:
    from bitnet.bench import distributed
    records = distributed.run(args.model, args.batch_size, args.processes, args.steps, args.rounds, args.bandwidth_gbit,
                              args.latency_us)
    _write_json(args.json, records)
    return 0


def cmd_gpu(args) -> int:
    from bitnet.backend import cuda_module
    from bitnet.bench import gpu
    from bitnet.bench.timing import print_table
    cuda = cuda_module()
    from numba import config
    repeats = args.rounds * args.repeats
    dev = "the CUDA simulator" if config.ENABLE_CUDASIM else cuda.get_current_device().name
    dev = dev.decode() if isinstance(dev, bytes) else dev
    print(f"bitnet bench {args.which} --device cuda: {dev}, median of {repeats} calls timed with CUDA events", flush=True)
    records = []
    if args.which == "gemm":
        from bitnet.bench.gpu_peaks import mma_peak_tops
        keys = ("ratio_vs_cublas", "ratio_vs_fp16", "fraction_of_peak")
        mma_peak = mma_peak_tops()
        if not config.ENABLE_CUDASIM:
            print(f"64-bit popcount peak of this GPU: {gpu.popc_peak_tops():.1f} TOPS (from its clock); 1-bit MMA peak: "
                  + (f"{mma_peak:.0f} TOPS (measured)" if mma_peak else "none (compute capability below 8.0)"),
                  flush=True)
        print_table([], keys)
        for name, m, n, k in gpu.gemm_cases(args.quick, tiny=config.ENABLE_CUDASIM):
            recs = gpu.bench_gemm_case(name, m, n, k, repeats, mma_peak)
            print_table(recs, keys, header=False)
            records += recs
    else:
        keys = ("ratio_vs_torch", "ratio_vs_fp16", "host_ms")
        print_table([], keys)
        for batch in (1,) if args.quick else gpu.BATCHES:
            recs = gpu.bench_model(batch, repeats, not args.no_torch)
            print_table(recs, keys, header=False)
            records += recs
    _write_json(args.json, records)
    return 0


def cmd_model(args) -> list:
    """``bench model``: every network's contenders built once, then for each thread count every
    network and batch size; the table has the tail columns and the ratio columns."""
    from bitnet.bench import load, model
    from bitnet.bench.timing import print_table
    threads = _threads_list(args.threads)
    print(f"bitnet bench model: threads {', '.join(map(str, threads))}, median of {args.rounds} x "
          f"{args.repeats} calls, load: {load.describe(args.busy)}", flush=True)
    nets = ("lenet-binary",) if args.quick else tuple(args.model or model.NETWORKS)
    contenders, records = [], []
    try:
        for net in nets:
            c = model.Contenders(net, not args.no_torch, not args.no_ort, args.data_dir, args.ort_int8,
                                 not args.no_lce)
            contenders.append(c)
            for note in c.notes:
                print(f"  {net}: {note}", flush=True)
        keys = tuple(model.RATIOS.values())
        print_table([], keys, tail=True, tops=False)
        for t in threads:
            for c in contenders:
                for batch in model.BATCHES:
                    recs = model.bench_network(c, batch, args.rounds, args.repeats, t, args.busy)
                    print_table(recs, keys, header=False, tail=True, tops=False)
                    records += recs
    finally:
        for c in contenders:
            c.close()
    return records


def cmd_kernels(args) -> int:
    import numba
    if getattr(args, "device", "cpu") == "cuda":
        return cmd_gpu(args)
    if args.which == "model":
        _write_json(args.json, cmd_model(args))
        return 0
    plot = getattr(args, "plot", None)  # (checked before the benchmark ran: _checked)

    from bitnet.bench import load
    from bitnet.bench.timing import print_table
    if args.threads:
        numba.set_num_threads(args.threads)
    threads = numba.get_num_threads()
    busy = getattr(args, "busy", None)
    print(f"bitnet bench {args.which}: {threads} threads, median of {args.rounds} x {args.repeats} calls"
          + ("" if busy is None else f", load: {load.describe(busy)}"), flush=True)
    records = []
    if args.which == "gemm":
        from bitnet.bench import gemm
        keys = ("ratio_vs_numpy",)
        print_table([], keys)
        for name, m, n, k in gemm.cases(args.quick):
            recs = gemm.bench_case(name, m, n, k, args.rounds, args.repeats)
            print_table(recs, keys, header=False)
            records += recs
    elif args.which == "conv":
        from bitnet.bench import conv
        keys = ("ratio_vs_numpy", "ratio_vs_float_conv")
        print_table([], keys)
        for c in ((64,) if args.quick else conv.CHANNELS):
            recs = conv.bench_case(c, args.rounds, args.repeats)
            print_table(recs, keys, header=False)
            records += recs
    else:
        from bitnet.bench import bits_training
        keys = ("ratio_vs_float_forward",)
        print_table([], keys, tail=True, tops=False)
        nets = ("lenet-binary",) if args.quick else tuple(bits_training.NETWORKS)
        for net in nets:
            recs = bits_training.bench_network(net, args.rounds, args.repeats, busy=busy)
            print_table(recs, keys, header=False, tail=True, tops=False)
            for r in recs:
                print(f"    {r['method']}: {r['steps_per_epoch']} steps per epoch -> {r['epoch_s']:.1f} s per epoch",
                      flush=True)
            records += recs
    _write_json(args.json, records)
    if plot:
        from bitnet.bench.plots import gemm_speedup
        gemm_speedup(records, plot, title=f"Binary GEMM speed-up, {threads} thread{'s' if threads > 1 else ''}")
        print(f"figure: {plot}")
    return 0
