"""Speed of SWAG sampling against MC dropout on the same network.

Run: python benchmarks/swag.py [--repeats 15] [--output FILE]

Median wall time of `--repeats` runs after one warm-up (which pays for
tracing), the variants of a case timed in shuffled rounds in one process.

- mlp_8_50_2: the article's 8-50-2 regression MLP (mean and log-variance),
  N=1000 inputs, T=100 samples, `ku.predict_regression`:
  - mc_dropout: the MLP with MCDropout(0.1) before each Dense
    (`ku.models.mlp`), the engine's tiled batch;
  - swag_vectorized: `ku.swag.SWAG` (rank 20, 25 snapshots) with
    `vectorize=True`: T weight draws, one `tf.vectorized_map` of
    `model.stateless_call`;
  - swag_map_fn: the same with `vectorize=False` (`tf.map_fn`, a compiled
    loop of 10 samples in parallel; the default on a CPU);
  - swag_bn: the MLP with a BatchNormalization layer after its hidden Dense,
    statistics recomputed per sample on 4 batches of 128 training rows
    (default `vectorize`).
- mlp_8_50_2_n100: the same MLP on N=100 inputs.
- cnn_28x28: a small CNN (Conv2D 16, pooling, Conv2D 32, pooling, Dense 10
  softmax) on 28x28 inputs, N=200, T=30, `ku.predict_classification`: MC
  dropout before the last Dense, SWAG both ways, and tiled_forward: one
  compiled forward pass of the CNN over the T*N tiled rows, the work of T
  full networks (MC dropout before the last layer computes the convolutions
  once per input; SWAG cannot).

Ratios: each SWAG variant over mc_dropout (the issue's target: at most 2 for
the MLP at N=1000, T=100), and swag_bn over swag_map_fn.
"""

import json

import keras
import numpy as np
import tensorflow as tf
from _timing import benchmark_main, timed_rounds

import keras_uncertainty as ku
from keras_uncertainty.models import mlp
from keras_uncertainty.swag import SWAG

RANK, T = 20, 100


def _collected(model, x, y, loss, batch_size=10, epochs=2, every=4):
    """Trains `model` briefly, collecting SWAG snapshots every `every`
    batches of the last epoch (at least 20, for rank 20)."""
    model.compile(keras.optimizers.SGD(0.01), loss)
    callback = ku.swag.SWAGCallback(
        start_epoch=epochs - 1, collect_every=every, unit="batch", max_rank=RANK
    )
    model.fit(
        x, y, epochs=epochs, batch_size=batch_size, verbose=0, callbacks=[callback]
    )
    return callback


def _variants(net, callback, **kwargs):
    return (
        SWAG(net, callback, rank=RANK, vectorize=True, **kwargs),
        SWAG(net, callback, rank=RANK, vectorize=False, **kwargs),
    )


def _row(case, n, t, seconds):
    row = {"case": case, "N": n, "T": t, "rank": RANK}
    row.update({f"{k}_s": v for k, v in seconds.items()})
    for name in ("swag_vectorized", "swag_map_fn"):
        row[f"{name}_over_mc_dropout"] = seconds[name] / seconds["mc_dropout"]
    if "swag_bn" in seconds:
        row["swag_bn_over_swag_map_fn"] = seconds["swag_bn"] / seconds["swag_map_fn"]
    if "tiled_forward" in seconds:
        ratio = seconds["swag_map_fn"] / seconds["tiled_forward"]
        row["swag_map_fn_over_tiled_forward"] = ratio
    print(json.dumps(row), flush=True)
    return row


def _mlp_rows(repeats, rng):
    x = rng.normal(size=(1000, 8)).astype("float32")
    y = (x[:, :1] + 0.1 * rng.normal(size=(1000, 1))).astype("float32")
    loss = ku.losses.gaussian_nll
    mc_model = mlp(8, 2, hidden_units=(50,), dropout_rate=0.1)
    mc_model.compile("adam", loss)
    net = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(50, activation="relu"),
         keras.layers.Dense(2)]
    )  # fmt: skip
    vectorized, looped = _variants(net, _collected(net, x, y, loss))
    bn_net = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(50),
         keras.layers.BatchNormalization(), keras.layers.ReLU(),
         keras.layers.Dense(2)]
    )  # fmt: skip
    swag_bn = SWAG(
        bn_net, _collected(bn_net, x, y, loss), rank=RANK, bn_update_data=x,
        bn_batches=4, bn_batch_size=128,
    )  # fmt: skip
    rows = []
    for n, case, extra in ((1000, "mlp_8_50_2", True), (100, "mlp_8_50_2_n100", False)):
        models = {
            "mc_dropout": mc_model,
            "swag_vectorized": vectorized,
            "swag_map_fn": looped,
        }
        if extra:
            models["swag_bn"] = swag_bn
        fns = {
            name: lambda m=m, xs=x[:n]: ku.predict_regression(m, xs, T)
            for name, m in models.items()
        }
        rows.append(_row(case, n, T, timed_rounds(repeats, **fns)))
    return rows


def _cnn(dropout):
    layers = [
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
    ]
    if dropout:
        layers.append(ku.layers.MCDropout(0.5))
    layers.append(keras.layers.Dense(10, activation="softmax"))
    return keras.Sequential(layers)


def _cnn_row(repeats, rng):
    n, t = 200, 30
    x = rng.normal(size=(n, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, size=n)
    mc_model = _cnn(dropout=True)
    net = _cnn(dropout=False)
    callback = _collected(
        net, x, y, "sparse_categorical_crossentropy", batch_size=8, epochs=1, every=1
    )
    vectorized, looped = _variants(net, callback)
    tiled = tf.constant(np.tile(x, (t, 1, 1, 1)))
    forward = tf.function(lambda batch: net(batch, training=False))
    for model in (vectorized, looped):
        probs = ku.predict_classification(model, x, t, seed=0).probs
        assert np.all(np.isfinite(probs)), "SWAG gave non-finite probabilities"
    seconds = timed_rounds(
        max(3, repeats // 3),
        mc_dropout=lambda: ku.predict_classification(mc_model, x, t),
        swag_vectorized=lambda: ku.predict_classification(vectorized, x, t),
        swag_map_fn=lambda: ku.predict_classification(looped, x, t),
        tiled_forward=lambda: forward(tiled),
    )
    return _row("cnn_28x28", n, t, seconds)


def run(repeats):
    rng = np.random.default_rng(0)
    rows = _mlp_rows(repeats, rng)
    rows.append(_cnn_row(repeats, rng))
    return rows


def _ms(row, key):
    return f"{row[key] * 1e3:.1f} ms" if key in row else "-"


def _ratio(row, key):
    return f"{row[key]:.2f}" if key in row else "-"


def markdown(rows):
    lines = [
        "| case | N | T | MC dropout | SWAG vectorized_map | SWAG map_fn "
        "| SWAG + BN | tiled forward | vectorized / MC | map_fn / MC | BN / map_fn |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['N']} | {r['T']} | {_ms(r, 'mc_dropout_s')} "
            f"| {_ms(r, 'swag_vectorized_s')} | {_ms(r, 'swag_map_fn_s')} "
            f"| {_ms(r, 'swag_bn_s')} | {_ms(r, 'tiled_forward_s')} "
            f"| {_ratio(r, 'swag_vectorized_over_mc_dropout')} "
            f"| {_ratio(r, 'swag_map_fn_over_mc_dropout')} "
            f"| {_ratio(r, 'swag_bn_over_swag_map_fn')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    benchmark_main(__doc__, "swag", run, markdown)
