"""How should a variance head train? The objectives on validation splits.

Chooses the default objective of `ku.losses.GaussianNLL` (and of every UCI
variance head) on training data only: each UCI split's training rows are cut
as the protocol cuts them to choose its grid (`uci._split_validation`: the
first 80% train, the last 20% validate), and the test rows are never read.
Each method with a variance head runs under the default protocol with each
of the protocol's variance objectives (`uci.variance_loss`): beta-NLL at
beta 0.5 (`"beta-nll"`, Seitzer et al. 2022), the plain NLL (`"nll"`) and
the faithful objective (`"faithful"`, Stirn et al. 2023: the loss's mean
trained by the squared error and, for the networks that end in
`ku.layers.GaussianHead` (MC dropout's and the Deep Ensemble's), the
variance head on features with their gradient stopped); last-layer Laplace
(homoscedastic, MSE) is the reference mean. Flipout VI keeps the ELBO's NLL
whatever the objective (`registry.Flipout.uci_loss`); it is measured here
with each objective forced, as the evidence for that choice. SWAG's,
BatchEnsemble's and MIMO's heads are the objective's (a `GaussianHead`,
`ku.layers.BatchEnsembleGaussianHead`, a `GaussianHead` of MIMO's heads).

Writes `benchmarks/results/variance_objective.json` after every unit
(atomically; a rerun resumes, skipping the units it has) and prints the
table of the benchmarks page's "Variance heads" section.

Usage: python benchmarks/variance_objective.py [--quick] [--datasets D ...]
[--methods M ...] [--objectives O ...]
"""

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

from keras_uncertainty.datasets.uci import load_uci
from keras_uncertainty.experiments import protocols, registry, uci, uci_methods

RESULTS = os.path.join(os.path.dirname(__file__), "results", "variance_objective.json")
# Small sets: two validation splits; the large ones: one (protein's 29,000
# fit rows cost 5 to 10 minutes per method and objective on 2 cores).
DATASETS = {
    "energy": 2,
    "yacht": 2,
    "bostonHousing": 2,
    "concrete": 2,
    "wine-quality-red": 2,
    "protein-tertiary-structure": 1,
    "naval-propulsion-plant": 1,
}
METHODS = ("hetero-mc-dropout", "ensemble", "vi", "swag", "batch-ensemble", "mimo")
OBJECTIVES = protocols.VARIANCE_OBJECTIVES
REFERENCE = "laplace"  # homoscedastic: its mean is the squared error's


def validation_split(split):
    """`split` with its training rows cut in two: the first 80% train, the
    last 20% are the "test" rows (the protocol's validation cut)."""
    fit, held = uci._split_validation(np.arange(len(split.train_rows)))
    return dataclasses.replace(
        split,
        x_train=split.x_train[fit],
        y_train=split.y_train[fit],
        x_test=split.x_train[held],
        y_test=split.y_train[held],
        train_rows=split.train_rows[fit],
        test_rows=split.train_rows[held],
    )


def _load(path):
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {"protocol": "default, validation splits of the training rows", "units": []}


def _save(path, record):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, path)


def units(datasets):
    for dataset in datasets:
        yield dataset, REFERENCE, "mse"
        for method in METHODS:
            for objective in OBJECTIVES:
                yield dataset, method, objective


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="yacht, one split")
    parser.add_argument("--output", default=RESULTS)
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS))
    parser.add_argument("--methods", nargs="+", choices=[REFERENCE, *METHODS])
    parser.add_argument("--objectives", nargs="+", choices=OBJECTIVES)
    args = parser.parse_args(argv)
    datasets = {"yacht": 1} if args.quick else DATASETS
    if args.datasets:
        datasets = {d: datasets[d] for d in args.datasets}
    # Flipout VI under each objective (its entry keeps the NLL: see above).
    vi = registry.METHODS["vi"]
    vi.uci_loss = lambda protocol: protocol.variance_loss()
    record = _load(args.output)
    done = {(u["dataset"], u["method"], u["objective"]) for u in record["units"]}
    for dataset, method, objective in units(datasets):
        if (
            (dataset, method, objective) in done
            or (args.methods and method not in args.methods)
            or (args.objectives and objective not in args.objectives + ["mse"])
        ):
            continue
        splits = [
            validation_split(load_uci(dataset, k)) for k in range(datasets[dataset])
        ]
        protocol = uci.Protocol(
            epochs_multiplier=protocols.EPOCHS_MULTIPLIER,
            learning_rate=protocols.LEARNING_RATE,
            schedule=protocols.SCHEDULE,
            num_samples=protocols.NUM_SAMPLES,
            seed=0,
            # Laplace has no variance head: its objective is moot.
            variance_objective="nll" if objective == "mse" else objective,
        )
        start = time.perf_counter()
        result = uci_methods.run(dataset, method, splits, protocol)
        unit = {
            "dataset": dataset,
            "method": method,
            "objective": objective,
            "splits": len(splits),
            "rmse": result.rmse_mean,
            "nll": result.nll_mean,
            "seconds": time.perf_counter() - start,
        }
        record["units"].append(unit)
        _save(args.output, record)
        print(json.dumps(unit), flush=True)
    print(table(record))


def table(record):
    """Markdown: validation RMSE / NLL per data set and method, objective."""
    cells = {(u["dataset"], u["method"], u["objective"]): u for u in record["units"]}
    sets = [d for d in DATASETS if any(k[0] == d for k in cells)]
    rows = [
        "| method | objective | " + " | ".join(sets) + " |",
        "|---|---|" + "---|" * len(sets),
    ]
    rows_of = [(REFERENCE, ("mse",))] + [(m, OBJECTIVES) for m in METHODS]
    for method, objectives in rows_of:
        for objective in objectives:
            row = []
            for dataset in sets:
                unit = cells.get((dataset, method, objective))
                row.append(
                    "" if unit is None else f"{unit['nll']:.2f} / {unit['rmse']:.3g}"
                )
            rows.append(f"| {method} | {objective} | " + " | ".join(row) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
