"""Seconds and scores of one UCI method on a data set's first k splits.

Usage: python benchmarks/uci_training_time.py TAG DATASET METHOD K [MULTIPLIER]

Appends one JSON line to `benchmarks/results/uci_training_time.jsonl`: run
the code before and after a change under two tags, back to back on one
machine, to compare seconds (the benchmarks page's table of the methods that
train every split at once).
"""

import json
import os
import sys

import keras_uncertainty as ku
from keras_uncertainty.experiments import uci_methods
from keras_uncertainty.experiments.protocols import (
    EPOCHS_MULTIPLIER,
    LEARNING_RATE,
    SCHEDULE,
)

RESULTS = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "results", "uci_training_time.jsonl"
)


def main(argv):
    tag, dataset, method, k = argv[0], argv[1], argv[2], int(argv[3])
    multiplier = float(argv[4]) if len(argv) > 4 else EPOCHS_MULTIPLIER
    splits = [ku.datasets.load_uci(dataset, s) for s in range(k)]
    protocol = uci_methods.Protocol(multiplier, LEARNING_RATE, SCHEDULE, 10000, 0)
    result = uci_methods.run(dataset, method, splits, protocol)
    line = dict(
        tag=tag,
        code=ku.__file__,
        dataset=dataset,
        method=method,
        splits=k,
        mult=multiplier,
        seconds=round(result.seconds, 1),
        rmse=result.rmse_mean,
        nll=result.nll_mean,
    )
    print(json.dumps(line), flush=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
