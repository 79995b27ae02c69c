"""Make the pretrained files of ``models/pretrained/`` again: train, convert, evaluate, record.

    python -m bitnet.models.make_pretrained lenet-binary [--data-dir DIR]
    python -m bitnet.models.make_pretrained binary-vgg-small [--data-dir DIR]

For the model's recipe (``RECIPES``) this runs ``bitnet train`` with the recipe's arguments
(``--save`` into a temporary checkpoint, which holds the optimizer state too), keeps the model
alone as ``<name>-<dataset>.h5`` (``bitnet.save`` without the optimizer: a third of the size),
converts it to ``<name>-<dataset>.packed.h5`` (``bitnet convert``), evaluates both on the data
set's test split, refuses a result below the recipe's target, and writes the model's entry into
``pretrained/manifest.json``: files, SHA-256 sums, sizes, test accuracies and the commands. Runs
on the CPU; a different thread count can change the last bits of float sums and so the weights,
but not the recipe's target.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile

RECIPES = {
    "lenet-binary": {"dataset": "mnist", "target": 0.990,
                     "train": ["--epochs", "6", "--lr", "2e-3", "--seed", "0"]},
    "binary-vgg-small": {"dataset": "fashion-mnist", "target": 0.910,
                         "train": ["--epochs", "6", "--lr", "2e-3", "--seed", "0"]},
}


def test_accuracy(path, dataset, data_dir=None) -> float:
    """Accuracy of the model file at ``path`` (checkpoint or packed) on ``dataset``'s test split."""
    import bitnet
    from bitnet.data import DataLoader
    from bitnet.data.datasets import load_splits, transform_for
    from bitnet.io.checkpoint import describe
    from bitnet.training import evaluate
    model = bitnet.load_packed(path) if describe(path)["kind"] == "packed" else bitnet.load(path)
    [(x, y)] = load_splits(dataset, ("test",), data_dir, False)
    return evaluate(model, DataLoader((x, y), 1000, transform=transform_for(dataset)))[1]


def _record(train_args, model) -> dict:
    """What ``bitnet train`` with ``train_args`` records in its files (``bitnet.cli_files.trained_on``)."""
    from bitnet.cli import build_parser
    from bitnet.cli_files import RUN_OPTIONS, trained_on
    from bitnet.io.config import zoo_input_shape
    options = dict(RUN_OPTIONS, **vars(build_parser().parse_args(train_args)))  # the defaults bitnet train fills in
    classes = model.zoo_config["kwargs"].get("num_classes", 10)
    return trained_on(options["dataset"], zoo_input_shape(model.zoo_config), classes, options)


def make(name, data_dir=None, log=print, trained=None) -> dict:
    """Train, convert, evaluate and record ``name`` (module docstring); returns its manifest entry.
    ``trained``: a checkpoint that ``bitnet train`` with the recipe's arguments wrote already (its
    last epoch must be the recipe's), used instead of training again."""
    import numba

    import bitnet
    from bitnet.cli import main as cli
    from bitnet.io.checkpoint import describe
    from bitnet.io.config import zoo_input_shape
    from bitnet.models.pretrained import FOLDER, MANIFEST, manifest, sha256
    recipe = RECIPES[name]
    dataset = recipe["dataset"]
    base = f"{name}-{dataset}"
    ckpt, packed = FOLDER / f"{base}.h5", FOLDER / f"{base}.packed.h5"
    train = ["train", "--model", name, "--dataset", dataset] + recipe["train"]
    data = ["--data-dir", str(data_dir)] if data_dir else []
    FOLDER.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        full = os.path.join(tmp, "with-optimizer.h5")
        if trained is None:
            log("running: bitnet " + " ".join(train + ["--save", full] + data))
            if cli(train + ["--save", full] + data) != 0:
                raise SystemExit(f"make_pretrained: bitnet train failed for {name}")
        else:
            full = os.fspath(trained)
            epochs = int(recipe["train"][recipe["train"].index("--epochs") + 1])
            state = bitnet.load_training_state(full)
            if state.epoch != epochs:
                raise SystemExit(f"make_pretrained: {full} ended at epoch {state.epoch}; the recipe trains {epochs}")
        model = bitnet.load(full)
        if model.zoo_config["name"] != name:
            raise SystemExit(f"make_pretrained: {full} holds {model.zoo_config['name']!r}, not {name!r}")
        record = _record(train, model)
        saved = describe(full)["trained_on"]
        if saved is not None and saved != record:
            raise SystemExit(f"make_pretrained: {full} was trained with {saved['options']}, not the recipe's "
                             f"{record['options']}")
        bitnet.save(model, ckpt, trained_on=record)  # the model alone, with what bitnet train records
    if cli(["convert", str(ckpt), str(packed)]) != 0:
        raise SystemExit(f"make_pretrained: bitnet convert failed for {name}")
    accuracy = {kind: round(test_accuracy(p, dataset, data_dir), 4) for kind, p in (("checkpoint", ckpt),
                                                                                    ("packed", packed))}
    log(f"{name} on the {dataset} test set: checkpoint {accuracy['checkpoint']:.4f}, packed {accuracy['packed']:.4f}")
    if min(accuracy.values()) < recipe["target"]:
        raise SystemExit(f"make_pretrained: {name} reached {accuracy}, below its target {recipe['target']}; "
                         "nothing recorded")
    entry = {
        "dataset": dataset,
        "kwargs": dict(model.zoo_config["kwargs"]),
        "input_shape": list(zoo_input_shape(model.zoo_config)),
        "target_accuracy": recipe["target"],
        "test_accuracy": accuracy,
        "checkpoint": {"file": ckpt.name, "sha256": sha256(ckpt), "bytes": ckpt.stat().st_size},
        "packed": {"file": packed.name, "sha256": sha256(packed), "bytes": packed.stat().st_size},
        "made_by": f"python -m bitnet.models.make_pretrained {name}",
        "commands": ["bitnet " + " ".join(train + ["--save", "CKPT"]),
                     f"python -c \"import bitnet; bitnet.save(bitnet.load('CKPT'), 'models/pretrained/{ckpt.name}')\"",
                     f"bitnet convert models/pretrained/{ckpt.name} models/pretrained/{packed.name}"],
        "bitnet_version": bitnet.__version__,
        "threads": numba.get_num_threads(),
        "date": datetime.date.today().isoformat(),
    }
    entries = manifest()
    entries[name] = entry
    with open(MANIFEST, "w") as f:
        json.dump(dict(sorted(entries.items())), f, indent=2)
        f.write("\n")
    log(f"recorded {name} in {MANIFEST}")
    return entry


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bitnet.models.make_pretrained", description=__doc__.split("\n")[0])
    ap.add_argument("name", choices=sorted(RECIPES))
    ap.add_argument("--data-dir", default=None, help="folder of the data set (default: BITNET_DATA or the cache)")
    ap.add_argument("--trained", default=None, metavar="CKPT",
                    help="a checkpoint that bitnet train wrote with the recipe's arguments: skip training")
    args = ap.parse_args(argv)
    make(args.name, args.data_dir, trained=args.trained)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
