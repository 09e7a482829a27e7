"""MIMO's UCI hidden width, chosen on validation splits of the training rows.

The three heads of the `mimo` entry share one hidden layer. Each width
(times the protocol's `n_hidden`) trains under the default protocol with the
faithful variance objective on two validation splits of each small set (the
first 80% of each split's training rows train, the last 20% score, as
`benchmarks/variance_objective.py` cuts them; the test rows are never read).

Appends one JSON line per unit to `benchmarks/results/mimo_width.jsonl` as it
finishes; a rerun skips the units it has.

Usage: python benchmarks/mimo_width.py
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from variance_objective import validation_split  # noqa: E402

from keras_uncertainty.datasets.uci import load_uci  # noqa: E402
from keras_uncertainty.experiments import protocols, registry, uci, uci_methods  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results", "mimo_width.jsonl")
DATASETS = ("energy", "yacht", "bostonHousing", "concrete", "wine-quality-red")
WIDTHS = (1, 2, 3)


def main():
    done = set()
    if os.path.exists(RESULTS):
        with open(RESULTS) as f:
            done = {(u["dataset"], u["width"]) for u in map(json.loads, f)}
    method = registry.METHODS["mimo"]
    for dataset in DATASETS:
        for width in WIDTHS:
            if (dataset, width) in done:
                continue
            method.uci_width = width
            splits = [validation_split(load_uci(dataset, k)) for k in range(2)]
            protocol = uci.Protocol(
                protocols.EPOCHS_MULTIPLIER,
                protocols.LEARNING_RATE,
                protocols.SCHEDULE,
                protocols.NUM_SAMPLES,
                0,
                variance_objective="faithful",
            )
            start = time.perf_counter()
            result = uci_methods.run(dataset, "mimo", splits, protocol)
            unit = {
                "dataset": dataset,
                "width": width,
                "objective": "faithful",
                "rmse": result.rmse_mean,
                "nll": result.nll_mean,
                "seconds": time.perf_counter() - start,
            }
            with open(RESULTS, "a") as f:  # one line per unit, as it finishes
                f.write(json.dumps(unit) + "\n")
            print(json.dumps(unit), flush=True)


if __name__ == "__main__":
    sys.exit(main())
