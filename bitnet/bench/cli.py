"""``bitnet bench`` subcommands."""
from __future__ import annotations

import json


def add_parser(sub):
    p = sub.add_parser("bench", help="benchmarks that print ratios measured in one run")
    bsub = p.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    t = bsub.add_parser("train", help="LeNet training time per epoch vs PyTorch (if installed)")
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--rounds", type=int, default=5)
    t.add_argument("--steps", type=int, default=20, help="steps per round per framework")
    t.add_argument("--data-dir", default=None)
    t.add_argument("--no-torch", action="store_true", help="time bitnet only")
    t.add_argument("--json", default=None, help="write the records to this file")
    t.set_defaults(run=cmd_train)
    for name, helptext in (("gemm", "XNOR-popcount GEMM vs NumPy float32 GEMM (BMXNet paper sizes, squares)"),
                           ("conv", "one binary convolution layer from a float input vs float im2col + GEMM"),
                           ("model", "packed lenet-binary / resnet18-binary inference vs float (and PyTorch)"),
                           ("train-bits", "binary networks' training step with the forward on bits vs in float")):
        k = bsub.add_parser(name, help=helptext)
        k.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
        k.add_argument("--repeats", type=int, default=3, help="timed calls per method per round (default 3)")
        k.add_argument("--threads", type=int, default=None, help="threads for bitnet, BLAS and torch "
                       "(default: all of Numba's)")
        k.add_argument("--quick", action="store_true", help="one small case only (a smoke test)")
        k.add_argument("--json", default=None, help="write the records to this file")
        if name == "model":
            k.add_argument("--no-torch", action="store_true", help="skip the PyTorch column")
        if name in ("gemm", "model"):
            k.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                           help="cuda: the GPU kernels vs cuBLAS / PyTorch on the GPU, timed with CUDA events")
        k.set_defaults(run=cmd_kernels, which=name)


def _write_json(path, records) -> None:
    """The benchmark's records as JSON at ``path`` (nothing when None)."""
    if path:
        with open(path, "w") as f:
            json.dump(records, f, indent=2)


def cmd_train(args) -> int:
    from bitnet.bench import train
    frameworks = ["bitnet"] if args.no_torch else None
    records = train.run(args.batch_size, args.threads, args.rounds, args.steps, args.data_dir, frameworks)
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
        keys = ("ratio_vs_cublas", "fraction_of_popc_peak")
        if not config.ENABLE_CUDASIM:
            print(f"64-bit popcount peak of this GPU: {gpu.popc_peak_tops():.1f} TOPS", flush=True)
        print_table([], keys)
        for name, m, n, k in gpu.gemm_cases(args.quick, tiny=config.ENABLE_CUDASIM):
            recs = gpu.bench_gemm_case(name, m, n, k, repeats)
            print_table(recs, keys, header=False)
            records += recs
    else:
        keys = ("ratio_vs_torch",)
        print_table([], keys)
        for batch in (1,) if args.quick else gpu.BATCHES:
            recs = gpu.bench_model(batch, repeats, not args.no_torch)
            print_table(recs, keys, header=False)
            records += recs
    _write_json(args.json, records)
    return 0


def cmd_kernels(args) -> int:
    import numba
    if getattr(args, "device", "cpu") == "cuda":
        return cmd_gpu(args)

    from bitnet.bench.timing import print_table
    if args.threads:
        numba.set_num_threads(args.threads)
    threads = numba.get_num_threads()
    print(f"bitnet bench {args.which}: {threads} threads, median of {args.rounds} x {args.repeats} calls",
          flush=True)
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
    elif args.which == "train-bits":
        from bitnet.bench import bits_training
        keys = ("ratio_vs_float_forward",)
        print_table([], keys)
        nets = ("lenet-binary",) if args.quick else tuple(bits_training.NETWORKS)
        for net in nets:
            recs = bits_training.bench_network(net, args.rounds, args.repeats)
            print_table(recs, keys, header=False)
            for r in recs:
                print(f"    {r['method']}: {r['steps_per_epoch']} steps per epoch -> {r['epoch_s']:.1f} s per epoch",
                      flush=True)
            records += recs
    else:
        from bitnet.bench import model
        keys = ("ratio_vs_bitnet_float", "ratio_vs_torch")
        print_table([], keys)
        nets = ("lenet-binary",) if args.quick else tuple(model.NETWORKS)
        for net in nets:
            for batch in model.BATCHES:
                recs = model.bench_network(net, batch, args.rounds, args.repeats, threads, not args.no_torch)
                print_table(recs, keys, header=False)
                records += recs
    _write_json(args.json, records)
    return 0
