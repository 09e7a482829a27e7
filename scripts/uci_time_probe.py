"""Where the UCI training time goes: per-call overhead, batch assembly, grid size.

Run: python scripts/uci_time_probe.py [DATASET] [--epochs 400]

Trains MC dropout's grid networks the way `experiments.uci` does (every split
and grid cell a member of one packed `ku.Ensemble`), and times, in one
process:

- the whole training at 1 and at `MAX_STEPS_PER_CALL` steps per compiled
  call (what Keras's per-call overhead costs);
- reading the same batches from the input pipeline alone (batch assembly);
- the training with one grid cell per split instead of all of them (what the
  grid's cells cost on top of the splits).
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import keras_uncertainty as ku  # noqa: E402
from keras_uncertainty.experiments import uci  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", nargs="?", default="yacht")
    parser.add_argument("--epochs", type=int, default=400)
    args = parser.parse_args()
    first = ku.datasets.load_uci(args.dataset, 0)
    splits = [ku.datasets.load_uci(args.dataset, k) for k in range(first.num_splits)]
    x, y = uci.data_table(splits)
    grid = [(p, t) for p in first.dropout_rates for t in first.tau_values]

    def train(cells, steps_per_call):
        uci.MAX_STEPS_PER_CALL = steps_per_call
        rows = [s.train_rows for s in splits for _ in cells]
        configs = cells * len(splits)
        start = time.perf_counter()
        uci.train_members(
            x,
            y,
            rows,
            1,
            first.n_hidden,
            args.epochs,
            uci.BATCH_SIZE,
            0,
            rates=np.array([p for p, _ in configs]),
            decays=np.full(len(configs), 1e-4),
        )
        return time.perf_counter() - start

    rows = [s.train_rows for s in splits for _ in grid]
    steps = args.epochs * -(-max(len(r) for r in rows) // uci.BATCH_SIZE)
    targets = np.zeros((len(x), len(rows)), "float32")
    start = time.perf_counter()
    for _ in uci.member_batches(x, targets, rows, args.epochs, uci.BATCH_SIZE, 0):
        pass
    assembly = time.perf_counter() - start
    full = train(grid, 32)
    one_per_call = train(grid, 1)
    one_cell = train(grid[:1], 32)
    members = len(rows)
    print(
        f"{args.dataset}: {members} networks ({len(splits)} splits x "
        f"{len(grid)} cells), {args.epochs} epochs, {steps} steps"
    )
    print("| measurement | seconds | per step |")
    print("|---|---|---|")
    for name, seconds in (
        ("training, 32 steps per call", full),
        ("training, 1 step per call", one_per_call),
        ("batch assembly alone (the input pipeline)", assembly),
        (
            f"training, 1 grid cell per split ({len(splits)} networks), 32 per call",
            one_cell,
        ),
    ):
        print(f"| {name} | {seconds:.1f} | {1000 * seconds / steps:.2f} ms |")


if __name__ == "__main__":
    main()
