"""Chooses the UCI default step schedule on training data only.

Run: python scripts/uci_schedule_probe.py DATASET [DATASET ...]
     [--splits 0-2] [--schedules constant,cosine] [--output FILE]

Every split is cut as the protocol cuts it for its own choices: the first 80%
of its training rows train and the last 20% (the validation rows) score, so
no test row is read. Each (data set, method, schedule) runs the protocol
(`experiments.uci_methods.run` with the default protocol otherwise) on these
validation splits and writes its RMSE and NLL, or the splits that diverged,
to the JSON file as soon as it finishes (atomically); a rerun skips the
units already there.
"""

import argparse
import dataclasses
import os
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402

from keras_uncertainty.cli.results import write_json_atomic  # noqa: E402
from keras_uncertainty.cli.usage import parse_splits  # noqa: E402
from keras_uncertainty.datasets import load_uci  # noqa: E402
from keras_uncertainty.experiments import protocols, uci, uci_methods  # noqa: E402


def validation_split(split):
    """`split` with its validation rows as the test rows."""
    fit, validation = uci._split_validation(split.train_rows)
    cut = len(fit)
    return dataclasses.replace(
        split,
        x_train=split.x_train[:cut],
        y_train=split.y_train[:cut],
        x_test=split.x_train[cut:],
        y_test=split.y_train[cut:],
        train_rows=fit,
        test_rows=validation,
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("datasets", nargs="+")
    parser.add_argument("--splits", default=None)
    parser.add_argument("--methods", default=",".join(protocols.METHODS))
    parser.add_argument("--schedules", default="constant,cosine")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--clip-value", type=float, default=None)
    parser.add_argument("--output", default="benchmarks/results/uci_schedule.json")
    args = parser.parse_args()
    try:
        with open(args.output) as f:
            done = json.load(f)
    except FileNotFoundError:
        done = {"units": []}
    seen = {(u["dataset"], u["method"], u["schedule"]) for u in done["units"]}
    for name in args.datasets:
        first = load_uci(name, 0)
        chosen = parse_splits(args.splits) if args.splits else range(first.num_splits)
        splits = [validation_split(load_uci(name, k)) for k in chosen]
        for method in args.methods.split(","):
            for schedule in args.schedules.split(","):
                clip = f"+clip{args.clip_value:g}" if args.clip_value else ""
                key = schedule + clip
                if (first.name, method, key) in seen:
                    continue
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    try:
                        result = dataclasses.asdict(
                            uci_methods.run(
                                first.name,
                                method,
                                splits,
                                uci.Protocol(
                                    protocols.EPOCHS_MULTIPLIER,
                                    protocols.LEARNING_RATE,
                                    schedule,
                                    args.num_samples,
                                    0,
                                    clip_value=args.clip_value,
                                ),
                            )
                        )
                    except FloatingPointError as exc:
                        result = {"failed": str(exc)}
                diverged = [
                    str(w.message) for w in caught if "diverged" in str(w.message)
                ]
                unit = {
                    "dataset": first.name,
                    "method": method,
                    "schedule": key,
                    "splits": list(chosen),
                    "warnings": diverged,
                    **result,
                }
                print(json.dumps(unit), flush=True)
                done["units"].append(unit)
                write_json_atomic(args.output, done)


if __name__ == "__main__":
    main()
