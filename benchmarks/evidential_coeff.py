"""Evidential regression's evidence regularizer, on validation splits.

The `evidential` entry's loss is the Normal-Inverse-Gamma NLL plus `coeff`
times Amini et al.'s evidence regularizer, `|y - gamma| (2 nu + alpha)`,
or the same value trained faithfully (`gamma` by the squared error). Each
setting trains under the default protocol on two validation splits
of each small set (the first 80% of each split's training rows train, the
last 20% score, as `benchmarks/variance_objective.py` cuts them; the test
rows are never read).

Appends one JSON line per unit to `benchmarks/results/evidential_coeff.jsonl` as it
finishes; a rerun skips the units it has.

Usage: python benchmarks/evidential_coeff.py
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from variance_objective import validation_split  # noqa: E402

from keras_uncertainty.datasets.uci import load_uci  # noqa: E402
from keras_uncertainty.experiments import protocols, registry, uci, uci_methods  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results", "evidential_coeff.jsonl")
DATASETS = ("energy", "yacht", "bostonHousing", "concrete", "wine-quality-red")
# (objective, coefficient): the paper's NIG NLL at three weights of the
# regularizer, and the faithful objective (`EvidentialRegressionLoss`'s
# `objective="faithful"` on a head with `stop_evidence_gradient`).
SETTINGS = (
    ("nll", 0.01),
    ("nll", 0.1),
    ("nll", 1.0),
    ("faithful", 0.01),
    ("faithful", 1.0),
)


def main():
    done = set()
    if os.path.exists(RESULTS):
        with open(RESULTS) as f:
            done = {
                (u["dataset"], u.get("objective", "nll"), u["coeff"])
                for u in map(json.loads, f)
            }
    method = registry.METHODS["evidential"]
    for dataset in DATASETS:
        for objective, coeff in SETTINGS:
            if (dataset, objective, coeff) in done:
                continue
            method.uci_objective, method.uci_coeff = objective, coeff
            splits = [validation_split(load_uci(dataset, k)) for k in range(2)]
            protocol = uci.Protocol(
                protocols.EPOCHS_MULTIPLIER,
                protocols.LEARNING_RATE,
                protocols.SCHEDULE,
                protocols.NUM_SAMPLES,
                0,
            )
            start = time.perf_counter()
            result = uci_methods.run(dataset, "evidential", splits, protocol)
            unit = {
                "dataset": dataset,
                "objective": objective,
                "coeff": coeff,
                "rmse": result.rmse_mean,
                "nll": result.nll_mean,
                "seconds": time.perf_counter() - start,
            }
            with open(RESULTS, "a") as f:  # one line per unit, as it finishes
                f.write(json.dumps(unit) + "\n")
            print(json.dumps(unit), flush=True)


if __name__ == "__main__":
    sys.exit(main())
