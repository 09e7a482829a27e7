"""Speed of SWAG sampling against MC dropout on the same MLP.

Run: python benchmarks/swag.py [--repeats 15] [--output FILE]

Median wall time of `--repeats` runs after one warm-up (which pays for
tracing), the variants timed in shuffled rounds in one process. The network
is the article's 8-50-2 regression MLP (mean and log-variance), N=1000
inputs, T=100 samples:

- mc_dropout: `ku.predict_regression` on the MLP with MCDropout(0.1) before
  each Dense (`ku.models.mlp`), the engine's tiled batch.
- swag: `ku.predict_regression` on `ku.swag.SWAG` (rank 20, 25 snapshots):
  T weight draws and one `tf.vectorized_map` of `model.stateless_call`.
- swag_map_fn: the same with `vectorize=False`: the network evaluated per
  sample by `tf.map_fn` (a compiled loop, 10 samples in parallel).
- swag_bn: an 8-50-2 MLP with a BatchNormalization layer, statistics
  recomputed per sample on 4 batches of 128 training rows.

- cnn: a small CNN (Conv2D 16, pooling, Conv2D 32, pooling, Dense 10 softmax)
  on 28x28 inputs, N=200, T=30: `ku.predict_classification` with SWAG
  (rank 20, `vectorize=True` and `vectorize=False`, the default for
  convolutions) against MC dropout before the last Dense, and the floor: one
  compiled forward pass of the CNN over the T*N tiled rows (what any method
  that draws whole-network weights pays).

Ratios: swag / mc_dropout (the issue's target is at most 2 for the MLP),
swag_map_fn / swag, swag_bn / swag.
"""

import json

import keras
import numpy as np
import tensorflow as tf
from _timing import benchmark_main, timed_rounds

import keras_uncertainty as ku
from keras_uncertainty.models import mlp
from keras_uncertainty.swag import SWAG

N, T, RANK = 1000, 100, 20


def _trained(model, x, y):
    """Trains `model` briefly and collects 25 SWAG snapshots (every 4
    batches), enough for rank 20."""
    model.compile(keras.optimizers.SGD(0.01), ku.losses.gaussian_nll)
    callback = ku.swag.SWAGCallback(
        start_epoch=1, collect_every=4, unit="batch", max_rank=RANK
    )
    model.fit(x, y, epochs=2, batch_size=10, verbose=0, callbacks=[callback])
    return callback


def run(repeats):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 8)).astype("float32")
    y = (x[:, :1] + 0.1 * rng.normal(size=(N, 1))).astype("float32")

    mc_model = mlp(8, 2, hidden_units=(50,), dropout_rate=0.1)
    mc_model.compile("adam", ku.losses.gaussian_nll)

    net = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(50, activation="relu"),
         keras.layers.Dense(2)]
    )  # fmt: skip
    callback = _trained(net, x, y)
    swag = SWAG(net, callback, rank=RANK)
    swag_map_fn = SWAG(net, callback, rank=RANK, vectorize=False)

    bn_net = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(50),
         keras.layers.BatchNormalization(), keras.layers.ReLU(),
         keras.layers.Dense(2)]
    )  # fmt: skip
    bn_callback = _trained(bn_net, x, y)
    swag_bn = SWAG(
        bn_net, bn_callback, rank=RANK, bn_update_data=x, bn_batches=4,
        bn_batch_size=128,
    )  # fmt: skip

    seconds = timed_rounds(
        repeats,
        mc_dropout=lambda: ku.predict_regression(mc_model, x, T),
        swag=lambda: ku.predict_regression(swag, x, T),
        swag_map_fn=lambda: ku.predict_regression(swag_map_fn, x, T),
        swag_bn=lambda: ku.predict_regression(swag_bn, x, T),
    )
    rows = [_row("mlp_8_50_2", N, T, seconds)]
    rows.append(_cnn_row(repeats, rng))
    return rows


def _row(case, n, t, seconds):
    row = {"case": case, "N": n, "T": t, "rank": RANK}
    row.update({f"{k}_s": v for k, v in seconds.items()})
    row["swag_over_mc_dropout"] = seconds["swag"] / seconds["mc_dropout"]
    row["map_fn_over_swag"] = seconds["swag_map_fn"] / seconds["swag"]
    if "swag_bn" in seconds:
        row["swag_bn_over_swag"] = seconds["swag_bn"] / seconds["swag"]
    print(json.dumps(row), flush=True)
    return row


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
    net.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
    callback = ku.swag.SWAGCallback(
        start_epoch=0, collect_every=1, unit="batch", max_rank=RANK
    )
    net.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[callback])
    swag = SWAG(net, callback, rank=RANK, vectorize=True)
    swag_map_fn = SWAG(net, callback, rank=RANK, vectorize=False)
    tiled = np.tile(x, (t, 1, 1, 1))
    forward = tf.function(lambda batch: net(batch, training=False))
    seconds = timed_rounds(
        max(3, repeats // 3),
        mc_dropout=lambda: ku.predict_classification(mc_model, x, t),
        swag=lambda: ku.predict_classification(swag, x, t),
        swag_map_fn=lambda: ku.predict_classification(swag_map_fn, x, t),
        floor=lambda: forward(tiled),
    )
    row = _row("cnn_28x28", n, t, seconds)
    row["map_fn_over_floor"] = seconds["swag_map_fn"] / seconds["floor"]
    return row


def markdown(rows):
    lines = [
        "| case | N | T | rank | MC dropout | SWAG | SWAG map_fn | SWAG + BN "
        "| SWAG / MC dropout | map_fn / SWAG | BN / SWAG |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        bn = f"{r['swag_bn_s'] * 1e3:.1f} ms" if "swag_bn_s" in r else "-"
        bn_ratio = f"{r['swag_bn_over_swag']:.2f}" if "swag_bn_s" in r else "-"
        lines.append(
            f"| {r['case']} | {r['N']} | {r['T']} | {r['rank']} "
            f"| {r['mc_dropout_s'] * 1e3:.1f} ms | {r['swag_s'] * 1e3:.1f} ms "
            f"| {r['swag_map_fn_s'] * 1e3:.1f} ms | {bn} "
            f"| {r['swag_over_mc_dropout']:.2f} | {r['map_fn_over_swag']:.2f} "
            f"| {bn_ratio} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    benchmark_main(__doc__, "swag", run, markdown)
