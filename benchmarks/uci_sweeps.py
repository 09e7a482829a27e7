"""Settings of one UCI registry entry, chosen on validation splits.

Each sweep trains one entry of the `uci` command under the default protocol
at each of its settings on two validation splits of each small set: the
first 80% of each split's training rows train, the last 20% score, as
`benchmarks/variance_objective.py` cuts them; the test rows are never read.

- `mimo-width`: the width of MIMO's hidden layer, shared by its three heads,
  times the protocol's `n_hidden` (`registry.MIMO.uci_width`), with the
  faithful variance objective.
- `ensemble-adversarial`: the Deep Ensemble's fast-gradient-sign step, as a
  fraction of each feature's range (the protocol's `adversarial`; the paper's
  0.01, or none), on the small sets and on one validation split of naval.
- `evidential`: evidential regression's objective (the paper's NIG NLL, or
  the same value trained faithfully: `gamma` by the squared error, the
  evidence on stopped features) and the weight of Amini et al.'s evidence
  regularizer `|y - gamma| (2 nu + alpha)` (`registry.Evidential.uci_objective`,
  `uci_coeff`).
- `vi-noise`: Flipout VI's noise: a log-variance predicted per input by its
  last Flipout layer, or one learned log-variance
  (`registry.Flipout.uci_noise`), on the small sets and one validation split
  of protein.

Appends one JSON line per unit to `benchmarks/results/<sweep>.jsonl` as it
finishes (`mimo_width.jsonl`, `ensemble_adversarial.jsonl`,
`evidential_coeff.jsonl`, `vi_noise.jsonl`); a rerun skips the units it
has. A setting is `{attribute: value}`: an attribute of the registry entry
(`uci_...`) or a field of the protocol (`uci.Protocol`).

Usage: python benchmarks/uci_sweeps.py SWEEP (mimo-width, ensemble-adversarial,
evidential, vi-noise)
"""

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from variance_objective import validation_split  # noqa: E402

from keras_uncertainty.datasets.uci import load_uci  # noqa: E402
from keras_uncertainty.experiments import protocols, registry, uci, uci_methods  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results")
DATASETS = ("energy", "yacht", "bostonHousing", "concrete", "wine-quality-red")
# Validation splits per data set (naval's 11,934 rows and protein's 45,730:
# one).
NUM_SPLITS = {
    **dict.fromkeys(DATASETS, 2),
    "naval-propulsion-plant": 1,
    "protein-tertiary-structure": 1,
}

# name: (registry entry, results file, [{attribute: value} per setting],
# data sets).
SWEEPS = {
    "mimo-width": (
        "mimo",
        "mimo_width.jsonl",
        [{"uci_width": w} for w in (1, 2, 3)],
        DATASETS,
    ),
    "ensemble-adversarial": (
        "ensemble",
        "ensemble_adversarial.jsonl",
        [{"adversarial": eps} for eps in (0.0, 0.01)],
        (*DATASETS, "naval-propulsion-plant"),
    ),
    "vi-noise": (
        "vi",
        "vi_noise.jsonl",
        [{"uci_noise": noise} for noise in ("heteroscedastic", "homoscedastic")],
        (*DATASETS, "protein-tertiary-structure"),
    ),
    "evidential": (
        "evidential",
        "evidential_coeff.jsonl",
        [
            {"uci_objective": objective, "uci_coeff": coeff}
            for objective, coeff in (
                ("nll", 0.01),
                ("nll", 0.1),
                ("nll", 1.0),
                ("faithful", 0.01),
                ("faithful", 1.0),
            )
        ],
        DATASETS,
    ),
}


def _key(unit, setting):
    return (unit["dataset"], *(unit[name.removeprefix("uci_")] for name in setting))


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("sweep", choices=list(SWEEPS))
    args = parser.parse_args(argv)
    name, filename, settings, datasets = SWEEPS[args.sweep]
    path = os.path.join(RESULTS, filename)
    done = set()
    if os.path.exists(path):
        with open(path) as f:
            done = {_key(u, settings[0]) for u in map(json.loads, f)}
    method = registry.METHODS[name]
    default = uci.Protocol(
        protocols.EPOCHS_MULTIPLIER,
        protocols.LEARNING_RATE,
        protocols.SCHEDULE,
        protocols.NUM_SAMPLES,
        0,
        variance_objective="faithful",
    )
    fields = {f.name for f in dataclasses.fields(uci.Protocol)}
    for dataset in datasets:
        for setting in settings:
            unit = {"dataset": dataset}
            unit.update({k.removeprefix("uci_"): v for k, v in setting.items()})
            if _key(unit, setting) in done:
                continue
            protocol = dataclasses.replace(
                default, **{k: v for k, v in setting.items() if k in fields}
            )
            for attribute, value in setting.items():
                if attribute not in fields:
                    setattr(method, attribute, value)
            splits = [
                validation_split(load_uci(dataset, k))
                for k in range(NUM_SPLITS[dataset])
            ]
            start = time.perf_counter()
            result = uci_methods.run(dataset, name, splits, protocol)
            unit.update(
                rmse=result.rmse_mean,
                nll=result.nll_mean,
                seconds=time.perf_counter() - start,
            )
            with open(path, "a") as f:  # one line per unit, as it finishes
                f.write(json.dumps(unit) + "\n")
            print(json.dumps(unit), flush=True)


if __name__ == "__main__":
    sys.exit(main())
