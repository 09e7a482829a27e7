"""The Deep Ensemble's epoch choice, on validation splits only.

Each split's training rows are cut into inner training rows (the first 80%)
and held-out rows (the last 20%; never the test rows); every variant of
`uci.deep_ensemble(epoch_choice=...)` trains on the inner rows only and is
scored on the held-out rows.

Usage: python benchmarks/ensemble_epoch_choice.py DATASET K none,best,retrain,joint

Appends one JSON line per variant to
`benchmarks/results/ensemble_epoch_choice.jsonl`.
"""

import dataclasses
import json
import os
import sys
import time

import numpy as np

import keras_uncertainty as ku
from keras_uncertainty.experiments import uci
from keras_uncertainty.experiments.protocols import (
    EPOCHS_MULTIPLIER,
    LEARNING_RATE,
    SCHEDULE,
)

RESULTS = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "results",
    "ensemble_epoch_choice.jsonl",
)


def validation_split(split):
    """`split` with its inner training rows and held-out rows as train/test."""
    fit, held = uci._split_validation(split.train_rows)
    n = len(fit)
    return dataclasses.replace(
        split,
        train_rows=fit,
        test_rows=held,
        x_train=split.x_train[:n],
        y_train=split.y_train[:n],
        x_test=split.x_train[n:],
        y_test=split.y_train[n:],
    )


def main(argv):
    dataset, k, variants = argv[0], int(argv[1]), argv[2].split(",")
    splits = [validation_split(ku.datasets.load_uci(dataset, s)) for s in range(k)]
    protocol = uci.Protocol(EPOCHS_MULTIPLIER, LEARNING_RATE, SCHEDULE, 1, 0)
    for variant in variants:
        start = time.perf_counter()
        rmses, nlls = uci.deep_ensemble(
            splits, protocol, epoch_choice=variant, choose_adversarial=False
        )
        line = dict(
            dataset=dataset,
            splits=k,
            variant=variant,
            seconds=round(time.perf_counter() - start, 1),
            rmse=float(np.mean(rmses)),
            nll=float(np.mean(nlls)),
            rmses=[round(float(r), 4) for r in rmses],
            nlls=[round(float(r), 4) for r in nlls],
        )
        print(json.dumps(line), flush=True)
        with open(RESULTS, "a") as f:
            f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
