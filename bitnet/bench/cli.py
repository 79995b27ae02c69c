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


def cmd_train(args) -> int:
    from bitnet.bench import train
    frameworks = ["bitnet"] if args.no_torch else None
    records = train.run(args.batch_size, args.threads, args.rounds, args.steps, args.data_dir, frameworks)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=2)
    return 0
