"""``bitnet train``: its options, and the run: a zoo model trained on a dataset, a checkpoint after every
epoch (``--save``), continued from one (``--resume``), on one process or data-parallel over MPI
(``bitnet.cli_distributed``); the last line printed is ``test accuracy: X``.

Batch norm in training needs at least two values per channel: where a model's batch norms see one
value per channel per image (after a flatten, or a 1x1 map), ``--batch-size 1`` (one image per process
with ``--distributed``) is refused before the data is read, and a last batch of one image per process
is left out of every epoch (said once, in the progress output). A resumed run whose schedule reaches
learning rate 0 before its last epoch (a finished cosine run resumed to more epochs) gets a warning
before it trains: those epochs change no weights."""
from __future__ import annotations

import argparse

import numpy as np

from bitnet import cli_distributed as dist, cli_options as opt
from bitnet.cli_files import (DATASET_CLASSES, DATASET_SHAPES, RUN_OPTIONS, CommandError, check_destination,
                              describe_model, flag, reading, resume_checks, trained_on, warn, writing)

_SAVED = argparse.SUPPRESS  # a run option's default: absent unless given (--resume takes the saved run's)


def add_parser(sub):
    """The ``train`` command's parser (options left out take the saved run's values with --resume)."""
    from bitnet import models
    from bitnet.data.datasets import NAMES
    p = sub.add_parser("train", help="train a zoo model on a dataset and report its test accuracy",
                       description="Train a model from the zoo; the last line printed is "
                                   "'test accuracy: X'.")
    p.add_argument("--model", default=_SAVED, choices=models.names(), help="zoo model name (default: lenet)")
    p.add_argument("--dataset", default=_SAVED, choices=NAMES, help="dataset (default: mnist)")
    opt.data_options(p)
    p.add_argument("--epochs", type=opt.EPOCHS, default=_SAVED, help="passes over the training set (default: 3)")
    p.add_argument("--batch-size", type=opt.BATCH, default=_SAVED,
                   help="minibatch size (default: 128); at least 2 for models whose batch norms see one value per "
                        "channel per image (the zoo's lenet models, binary-vgg-small)")
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
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="train on the CPU (default) or an NVIDIA GPU (needs CuPy: pip install 'bitnet-bnn[cuda]')")
    dist.add_options(p)
    p.add_argument("--save", default=None, metavar="CKPT", type=opt.file_name("the checkpoint to write"),
                   help="write a training checkpoint (HDF5) after every epoch, atomically; the folder must "
                        "exist and be writable (checked before training)")
    p.add_argument("--resume", default=None, metavar="CKPT", type=opt.file_name("the checkpoint to continue"),
                   help="continue the run saved in CKPT (model, optimizer, schedule, data order) from "
                        "its next epoch up to --epochs: the options left out are the saved run's, options "
                        "given must equal them (--epochs may differ)")
    p.set_defaults(run=cmd_train)


def make_optimizer(name, params, lr, weight_decay):
    """The optimizer ``--optimizer`` names: SGD with Nesterov momentum 0.9, Adam or AdamW."""
    from bitnet import optim
    if name == "sgd":
        return optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    cls = optim.AdamW if name == "adamw" else optim.Adam
    return cls(params, lr=lr, weight_decay=weight_decay)


def least_batch(model, image_shape, processes: int = 1, sync: bool = False) -> int:
    """The fewest images per batch on each process that ``model``'s batch norms can train on: a batch
    norm in training needs at least 2 values per channel, and sees (values per channel of one image)
    x (images) of them, x ``processes`` for a synchronized one (SyncBatchNorm, or ``sync``). Found by
    one forward pass of a blank image in eval mode (no statistics or random numbers change)."""
    import math

    from bitnet import Tensor, no_grad
    from bitnet.nn.layers import _BatchNorm
    from bitnet.nn.sync_batchnorm import _Sync
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    if not norms:
        return 1
    seen = {}

    def record(module, inputs, out):
        x = inputs[0]
        seen[id(module)] = int(np.prod(x.shape)) // max(int(x.shape[1]), 1)
    hooks = [m.register_forward_hook(record) for m in norms]
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with no_grad(), np.errstate(all="ignore"):
            model(Tensor(np.zeros((1,) + tuple(image_shape), np.float32)))
    finally:
        for h in hooks:
            h.remove()
        for m, mode in modes:
            object.__setattr__(m, "training", mode)
    need = 1
    for m in norms:
        values = seen.get(id(m))
        if values:  # (a batch norm the forward does not use needs nothing)
            factor = processes if (sync or isinstance(m, _Sync)) else 1
            need = max(need, math.ceil(2 / (values * factor)))
    return need


def check_batch_norm_batch(model, image_shape, batch_size: int, processes: int, sync: bool) -> int:
    """``--batch-size`` refused where a process's part of each batch is too small for the model's batch
    norms (``least_batch``); returns that least part (1 where it was not asked: batches of 2 or more)."""
    local = batch_size // processes
    if local >= 2:
        return 1
    need = least_batch(model, image_shape, processes, sync)
    if local >= need:
        return need
    if processes == 1:
        raise CommandError(f"--batch-size {batch_size}: batch norm in training needs at least {need} images per "
                           f"batch (the batch norms of {_name(model)} see one value per channel per image); give "
                           f"--batch-size {need} or more")
    raise CommandError(f"--batch-size {batch_size}: with --distributed each of the {processes} processes trains on "
                       f"{local} image{'s' if local != 1 else ''} of each batch, and batch norm in training needs at "
                       f"least {need}; give --batch-size {need * processes} or more, or --sync-batchnorm (batch-norm "
                       f"statistics over all {processes} processes' images)")


def _name(model) -> str:
    cfg = getattr(model, "zoo_config", None)
    return cfg["name"] if cfg else type(model).__name__


def drop_small_last_batch(loader, processes: int, need) -> str | None:
    """Leave out the last batch of every epoch where it would give a process fewer images than the
    model's batch norms train on (``need()``, asked only then); returns the line saying so, or None."""
    n, b = len(loader.dataset), loader.batch_size
    last = n % b
    last -= last % processes  # (what a distributed run's processes share of it: the rest is left out anyway)
    part = last // processes
    if part == 0 or part >= 2 or loader.drop_last:
        return None
    least = need()
    if part >= least:
        return None
    loader.drop_last = True
    each = " per process" if processes > 1 else ""
    return (f"note: the last batch of each epoch would hold {part} image{'s' if part != 1 else ''}{each}, too few "
            f"for batch norm in training (at least {least}): it is left out ({n % b} of the {n} images, "
            + ("a different one" if n % b == 1 else "different ones") + " each epoch)")


def schedule_warning(scheduler, start: int, epochs: int, steps_per_epoch: int, path) -> str | None:
    """The warning for a resumed run whose restored schedule reaches learning rate 0 before its last
    epoch (a finished cosine run resumed to more epochs): those epochs would change no weights, only
    the batch-norm statistics; None when every epoch trains."""
    if scheduler is None or start > epochs:
        return None
    t0 = scheduler.last_epoch  # the step the resumed run starts at
    dead = [e for e in range(start, epochs + 1) if max(scheduler.lr_at(t0 + (e - start) * steps_per_epoch)) <= 0]
    if not dead:
        return None
    first, live = dead[0], dead[0] - 1
    which = f"epoch {first} trains" if first == epochs else f"epochs {first}-{epochs} train"
    ended = (f"ended with epoch {live}, where the saved run stopped" if first == start
             else f"ends after epoch {live}")
    instead = f"stop at --epochs {live} (or leave out --epochs), or " if first > start else ""
    return (f"--resume {path} --epochs {epochs}: the saved run's learning-rate schedule {ended}, and a resumed run "
            f"keeps it: {which} at learning rate 0, changing no weights (only the batch-norm statistics); to train "
            f"longer, {instead}start a new run with --epochs {epochs} (without --resume)")


def cmd_train(args) -> int:
    from bitnet import models, optim
    from bitnet.data import DataLoader
    from bitnet.data.datasets import load_splits, transform_for
    from bitnet.training import evaluate, fit

    if args.device == "cuda":
        from bitnet.gpu.arrays import xp
        xp()  # CudaUnavailableError (reported by the command line) before any data is read
    comm = args.comm = dist.communicator(args)
    if comm is not None and comm.size > 1 and args.device == "cuda":
        raise CommandError("--device cuda with --distributed: distributed training runs on the CPU only for now; "
                           "drop one of the two")
    main_rank = comm is None or comm.is_main
    given = {k for k in RUN_OPTIONS if hasattr(args, k)}
    if args.save and main_rank:
        check_destination(args.save, "--save")
    taken = resume_checks(args, given, lambda m: warn(args, m)) if args.resume else []
    for k in RUN_OPTIONS:
        if not hasattr(args, k):
            setattr(args, k, RUN_OPTIONS[k])
    dist.check_batch(comm, args.batch_size)
    seeds = np.random.SeedSequence(args.seed).spawn(2)
    import bitnet
    image_shape = DATASET_SHAPES[args.dataset]
    num_classes = DATASET_CLASSES[args.dataset]
    if args.resume:  # the model before the data: --batch-size is checked against its batch norms
        with reading(args.resume):
            model = bitnet.load(args.resume)
    else:
        model = models.get(args.model, in_channels=image_shape[0], image_size=image_shape[-1],
                           num_classes=num_classes, seed=np.random.default_rng(seeds[1]))
    processes = 1 if comm is None else comm.size
    least = check_batch_norm_batch(model, image_shape, args.batch_size, processes, args.sync_batchnorm)
    dist.sync_batchnorm(model, comm, args.sync_batchnorm)
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
    dropped = drop_small_last_batch(
        train_loader, processes, lambda: max(least, least_batch(model, image_shape, processes, args.sync_batchnorm)))
    if len(steps) == 0:  # fewer images than processes, or a single batch too small for batch norm
        n, each = len(y_train), 1 if dropped is None else 2
        given = f" (--limit-train {args.limit_train})" if args.limit_train is not None else ""
        why = ("batch norm in training needs at least 2 images per batch" if dropped else "every process needs "
               "at least 1 image per batch") + (f" on each of the {processes} processes" if processes > 1 and dropped
                                                else "")
        raise CommandError(f"{n} training image{'s' if n != 1 else ''}{given} {'make' if n != 1 else 'makes'} no batch "
                           f"to train on: {why}; give "
                           f"--limit-train {processes * each} or more")
    sample = transform(x_train[:1])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(args.optimizer, params, args.lr, args.weight_decay)
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
        idle = schedule_warning(scheduler, start, args.epochs, len(steps), args.resume)
        if idle:
            warn(args, idle)  # before the first epoch: time to stop the run
    log = None if args.quiet or not main_rank else print
    if log:
        changed = [f"{flag(k)} {getattr(args, k)}" for k in taken if getattr(args, k) != RUN_OPTIONS[k]]
        log(f"training {describe_model(model)} on {args.dataset}: {len(y_train)} images, {args.epochs} epochs, "
            f"batch {args.batch_size}, {args.optimizer} lr {args.lr}, {model.num_parameters()} parameters"
            + (" on the GPU" if args.device == "cuda" else "")
            + (f"; resumed from {args.resume} after epoch {start - 1}" if args.resume else "")
            + (f" (its options: {', '.join(changed)})" if changed else ""))
        if comm is not None:
            log(dist.describe(comm, steps))
        if dropped:
            log(dropped)
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
            start_epoch=start, after_epoch=save_checkpoint if args.save else None, distributed=comm,
            device=args.device)
    loss, acc = evaluate(model, test_loader, distributed=comm, device=args.device)
    if log:
        log(f"test loss: {loss:.4f}")
    if main_rank:
        print(f"test accuracy: {acc:.4f}")
    return 0
