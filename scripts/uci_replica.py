"""Our UCI engine against a plain-Keras replica of the MC dropout paper's code.

Run: python scripts/uci_replica.py [DATASET] [--splits 0-2] [--multipliers 10,100]

The replica follows the public code of Gal & Ghahramani's UCI experiments
(github.com/yaringal/DropoutUncertaintyExps, `net.py` and `experiment.py`),
one network at a time, with Keras layers only: inputs and targets
standardized with the training rows; Dropout on the input, one hidden ReLU
layer, Dropout, a linear output, the dropout kept on at prediction
(`training=True` in the functional graph); L2 `l^2 (1 - p) / (2 N tau)` on
the kernels, l = 1e-2; MSE; Adam with Keras's default step; batch 128,
shuffled every epoch; `n_epochs x multiplier` epochs. For each split the
(dropout rate, tau) grid is searched on the last 20% of the training rows
by the validation log-likelihood with T = 10,000, and the best cell is
retrained on all training rows; the test RMSE of the MC mean and the test
log-likelihood with tau, with T = 10,000 samples.

Our engine runs the same splits with `experiments.uci.dropout_grid` (every split and
grid cell a member of one packed `ku.Ensemble`) and Adam 1e-3, so that the
only difference left is the implementation. Each (multiplier,
implementation) unit is written to the JSON file when it finishes
(atomically); a rerun skips the units already there.
"""

import argparse
import math
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_uncertainty as ku  # noqa: E402
from keras_uncertainty.cli.results import write_json_atomic  # noqa: E402
from keras_uncertainty.cli.usage import parse_splits  # noqa: E402
from keras_uncertainty.experiments import uci  # noqa: E402

PUBLIC_CODE_LEARNING_RATE = 1e-3  # Keras's Adam default, as the public code
SAMPLES = 10_000


def _standardize(train, *others):
    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 0, std, 1.0)
    return [(a - mean) / std for a in (train, *others)], mean, std


def _network(num_inputs, hidden, rate, decay):
    inputs = keras.Input((num_inputs,))
    h = keras.layers.Dropout(rate)(inputs, training=True)
    h = keras.layers.Dense(
        hidden, activation="relu", kernel_regularizer=keras.regularizers.L2(decay)
    )(h)
    h = keras.layers.Dropout(rate)(h, training=True)
    outputs = keras.layers.Dense(1, kernel_regularizer=keras.regularizers.L2(decay))(h)
    model = keras.Model(inputs, outputs)
    model.compile(
        keras.optimizers.Adam(PUBLIC_CODE_LEARNING_RATE), "mean_squared_error"
    )
    return model


def _fit(model, x, y, epochs, seed):
    # One `fit` over every epoch's shuffled batches: the updates of
    # fit(epochs=epochs, batch_size=128, shuffle=True), without its per-epoch
    # overhead (thousands of epochs of two batches on the small sets).
    n = len(x)
    data = (
        tf.data.Dataset.from_tensor_slices((x.astype("float32"), y.astype("float32")))
        .shuffle(n, seed=seed, reshuffle_each_iteration=True)
        .batch(uci.BATCH_SIZE)
        .repeat(epochs)
        .prefetch(tf.data.AUTOTUNE)
    )
    model.fit(data, epochs=1, verbose=0)


def _scores(model, x, y, y_mean, y_std, tau):
    """Test RMSE of the MC mean and the log-likelihood with precision tau."""
    draws = []
    for _ in range(SAMPLES // 1000):
        tiled = np.tile(x.astype("float32"), (1000, 1))
        out = model.predict(tiled, batch_size=65536, verbose=0)
        draws.append(out.reshape(1000, len(x)))
    samples = np.concatenate(draws) * y_std + y_mean  # (T, n)
    rmse = math.sqrt(np.mean((y - samples.mean(0)) ** 2))
    # The public code's log-likelihood: the mixture of N(yhat_t, 1/tau).
    ll = -ku.metrics.mixture_nll(y, samples, 1.0 / math.sqrt(tau))
    return rmse, ll


def replica_split(split, multiplier, seed):
    epochs = max(1, int(round(split.n_epochs * multiplier)))
    cut = int(0.8 * len(split.x_train))
    fit_x, val_x = split.x_train[:cut], split.x_train[cut:]
    fit_y, val_y = split.y_train[:cut], split.y_train[cut:]
    best = None
    for rate in split.dropout_rates:
        for tau in split.tau_values:
            keras.utils.set_random_seed(seed)
            (fx, vx), _, _ = _standardize(fit_x, val_x)
            (fy,), y_mean, y_std = _standardize(fit_y)
            decay = uci.LENGTH_SCALE**2 * (1 - rate) / (2.0 * len(fx) * tau)
            model = _network(fx.shape[1], split.n_hidden, rate, decay)
            _fit(model, fx, fy, epochs, seed)
            _, ll = _scores(model, vx, val_y, y_mean, y_std, tau)
            if best is None or ll > best[0]:
                best = (ll, rate, tau)
    _, rate, tau = best
    keras.utils.set_random_seed(seed + 1)
    (tx, sx), _, _ = _standardize(split.x_train, split.x_test)
    (ty,), y_mean, y_std = _standardize(split.y_train)
    decay = uci.LENGTH_SCALE**2 * (1 - rate) / (2.0 * len(tx) * tau)
    model = _network(tx.shape[1], split.n_hidden, rate, decay)
    _fit(model, tx, ty, epochs, seed)
    rmse, ll = _scores(model, sx, split.y_test, y_mean, y_std, tau)
    return rmse, -ll


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", nargs="?", default="yacht")
    parser.add_argument("--splits", default="0-2")
    parser.add_argument("--multipliers", default="10,100")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--output", default=os.path.join("benchmarks", "results", "uci_replica.json")
    )
    args = parser.parse_args()
    splits = [ku.datasets.load_uci(args.dataset, k) for k in parse_splits(args.splits)]
    units = {}
    if os.path.exists(args.output):
        with open(args.output) as f:
            units = json.load(f)["units"]
    for multiplier in (float(m) for m in args.multipliers.split(",")):
        for implementation in ("engine", "replica"):
            key = f"{args.dataset} {args.splits} {multiplier:g}x {implementation}"
            if key in units:
                continue
            start = time.perf_counter()
            if implementation == "engine":
                rmses, nlls = uci.dropout_grid(
                    splits,
                    uci.Protocol(
                        multiplier,
                        PUBLIC_CODE_LEARNING_RATE,
                        "constant",
                        SAMPLES,
                        args.seed,
                    ),
                    heteroscedastic=False,
                )
            else:
                rmses, nlls = zip(
                    *(replica_split(s, multiplier, args.seed) for s in splits)
                )
            units[key] = {
                "rmse": [float(v) for v in rmses],
                "nll": [float(v) for v in nlls],
                "seconds": time.perf_counter() - start,
            }
            write_json_atomic(args.output, {"units": units})
            print(key, json.dumps(units[key]), flush=True)
    print("| unit | RMSE per split | mean RMSE | NLL per split | mean NLL | seconds |")
    print("|---|---|---|---|---|---|")
    for key, unit in units.items():
        rmses = ", ".join(f"{v:.2f}" for v in unit["rmse"])
        nlls = ", ".join(f"{v:.2f}" for v in unit["nll"])
        print(
            f"| {key} | {rmses} | {np.mean(unit['rmse']):.2f} | {nlls} "
            f"| {np.mean(unit['nll']):.2f} | {unit['seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
