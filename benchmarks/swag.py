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
- swag_map_fn: the same draws, the network evaluated per sample with
  `tf.map_fn` (a compiled loop over samples): what vectorizing saves.
- swag_bn: an 8-50-2 MLP with a BatchNormalization layer, statistics
  recomputed per sample on 4 batches of 128 training rows.

Ratios: swag / mc_dropout (the issue's target is at most 2),
swag_map_fn / swag, swag_bn / swag.
"""

import json

import keras
import numpy as np
import tensorflow as tf
from _timing import benchmark_main, timed_rounds
from keras import tree

import keras_uncertainty as ku
from keras_uncertainty.models import mlp
from keras_uncertainty.swag import SWAG, SWAGSampledModel

N, T, RANK = 1000, 100, 20


class _MapFnSampled(SWAGSampledModel):
    def forward(self, inputs, num_samples):
        swag = self.model
        weights = swag.draw_weights(num_samples)
        x = tree.flatten(inputs)[0]
        out = tf.map_fn(
            lambda flat: swag.call_with_weights(flat, x),
            weights,
            fn_output_signature=tf.float32,
        )
        return tf.reshape(out, [-1, out.shape[-1]])


class _MapFnSWAG(SWAG):
    def as_sampled_model(self):
        return _MapFnSampled(self)


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
    swag_map_fn = _MapFnSWAG(net, callback, rank=RANK)

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
    row = {"case": "mlp_8_50_2", "N": N, "T": T, "rank": RANK}
    row.update({f"{k}_s": v for k, v in seconds.items()})
    row["swag_over_mc_dropout"] = seconds["swag"] / seconds["mc_dropout"]
    row["map_fn_over_swag"] = seconds["swag_map_fn"] / seconds["swag"]
    row["swag_bn_over_swag"] = seconds["swag_bn"] / seconds["swag"]
    print(json.dumps(row), flush=True)
    return [row]


def markdown(rows):
    lines = [
        "| case | N | T | rank | MC dropout | SWAG | SWAG map_fn | SWAG + BN "
        "| SWAG / MC dropout | map_fn / SWAG | BN / SWAG |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['N']} | {r['T']} | {r['rank']} "
            f"| {r['mc_dropout_s'] * 1e3:.1f} ms | {r['swag_s'] * 1e3:.1f} ms "
            f"| {r['swag_map_fn_s'] * 1e3:.1f} ms | {r['swag_bn_s'] * 1e3:.1f} ms "
            f"| {r['swag_over_mc_dropout']:.2f} | {r['map_fn_over_swag']:.2f} "
            f"| {r['swag_bn_over_swag']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    benchmark_main(__doc__, "swag", run, markdown)
