"""Speed of MC dropout on the models users bring (issue #20): a Keras LSTM
converted with `ku.layers.to_mc_dropout`, a two-head model, a keras_hub backbone.

Run: python benchmarks/models_users_bring.py [--repeats 15] [--output FILE]

Every figure is the median wall time of its rounds after one warm-up (which
pays for tracing), all taken in one process so that the ratios compare like
with like on a shared, noisy machine; the variants of a case are timed in
rounds, in shuffled order (the slow eager loop in a block of its own, with
`max(3, repeats // 3)` rounds). Cases:

- lstm_forecaster: a plain `keras.layers.LSTM(64, dropout=0.2,
  recurrent_dropout=0.2)` over 24 steps of 4 features, then Dense(2) (mean and
  log-variance, compiled with `ku.losses.gaussian_nll`), N=1000, T=100.
  (a) the article's loop on the ORIGINAL model: T eager
  `model(x, training=True)` calls combined in numpy; (b)
  `ku.predict_regression` on `ku.layers.to_mc_dropout(model)`; (c) the
  compiled floor with the dropout on: one `tf.function` that tiles the N
  inputs T times, calls the original model with `training=True` and reduces
  to mean and standard deviation inside the function.
- two_heads: an MC-dropout MLP trunk (8-64-64, `ku.layers.MCDropout(0.1)`)
  with two outputs, a regression head Dense(2) and a classification head
  Dense(10, softmax), N=1000, T=100: `ku.sample` of the two-output model
  against `ku.sample` of the single-output model made of the same trunk and
  both heads concatenated into one output (the same layers and arithmetic,
  the same bytes out); and, for reference, the trunk with the regression
  head alone.
- bert_backbone_conversion: `ku.layers.to_mc_dropout` of a
  `keras_hub.models.BertBackbone` (vocabulary 30522, 4 layers, 4 heads,
  hidden 256, intermediate 1024, sequence 128, dropout 0.1; random weights
  from the config, nothing downloaded), `max(3, repeats // 5)` rounds
  (skipped with a note when keras_hub is missing).
"""

import json
import time

import keras
import numpy as np
import tensorflow as tf
from _timing import benchmark_main, timed_rounds

import keras_uncertainty as ku

TARGETS = {
    "loop_over_ku": ">= 10x",
    "ku_over_floor": "<= 1.3x",
    "two_heads_over_one_output": "<= 1.1x",
    "conversion_s": "< 5 s",
}


def lstm_forecaster(steps=24, features=4, units=64, rate=0.2):
    inputs = keras.Input((steps, features))
    hidden = keras.layers.LSTM(units, dropout=rate, recurrent_dropout=rate)(inputs)
    outputs = keras.layers.Dense(2)(hidden)
    model = keras.Model(inputs, outputs, name="lstm_forecaster")
    model.compile(optimizer="adam", loss=ku.losses.gaussian_nll)
    return model


def article_loop_regression(model, x, num_samples):
    """T eager calls of the original model in training mode, numpy moments."""
    outs = np.stack([model(x, training=True).numpy() for _ in range(num_samples)])
    mu, var = outs[..., :1], np.exp(outs[..., 1:])
    mean = mu.mean(0)
    return mean, np.sqrt((var + mu**2).mean(0) - mean**2)


def tiled_floor(model, x, num_samples):
    """One compiled call: tile, the original model with dropout on, moments."""
    x = tf.constant(x)

    @tf.function
    def forward(batch):
        n = tf.shape(batch)[0]
        tiled = tf.tile(batch, [num_samples] + [1] * (batch.shape.rank - 1))
        out = tf.reshape(model(tiled, training=True), [num_samples, n, -1])
        mu, var = out[..., :1], tf.exp(out[..., 1:])
        mean = tf.reduce_mean(mu, 0)
        std = tf.sqrt(tf.reduce_mean(var + mu**2, 0) - mean**2)
        return mean, std

    return lambda: [t.numpy() for t in forward(x)]


def two_head_models(features=8, units=64, rate=0.1, classes=10):
    inputs = keras.Input((features,))
    hidden = inputs
    for _ in range(2):
        hidden = keras.layers.Dense(units, activation="relu")(hidden)
        hidden = ku.layers.MCDropout(rate)(hidden)
    regression = keras.layers.Dense(2, name="regression")(hidden)
    classification = keras.layers.Dense(
        classes, activation="softmax", name="classification"
    )(hidden)
    two = keras.Model(inputs, [regression, classification], name="two_heads")
    one = keras.Model(
        inputs,
        keras.layers.Concatenate()([regression, classification]),
        name="one_output",
    )
    regression_only = keras.Model(inputs, regression, name="regression_only")
    return two, one, regression_only


def bert_backbone():
    import keras_hub

    return keras_hub.models.BertBackbone(
        vocabulary_size=30522,
        num_layers=4,
        num_heads=4,
        hidden_dim=256,
        intermediate_dim=1024,
        max_sequence_length=128,
        dropout=0.1,
    )


def run(repeats):
    rng = np.random.default_rng(0)
    rows = []

    def record(row):
        rows.append(row)
        print(json.dumps(row), flush=True)

    # LSTM forecaster.
    n, t = 1000, 100
    keras.utils.set_random_seed(0)
    x = rng.normal(size=(n, 24, 4)).astype("float32")
    model = lstm_forecaster()
    start = time.perf_counter()
    mc_model, report = ku.layers.to_mc_dropout(model, return_report=True)
    conversion = time.perf_counter() - start
    assert report.converted and not report.not_converted, report
    seconds = timed_rounds(
        max(3, repeats // 3), loop=lambda: article_loop_regression(model, x, t)
    )
    seconds.update(
        timed_rounds(
            repeats,
            ku=lambda: ku.predict_regression(mc_model, x, t, verbose=0),
            floor=tiled_floor(model, x, t),
        )
    )
    record(
        {
            "case": "lstm_forecaster",
            "N": n,
            "T": t,
            "conversion_s": conversion,
            **{f"{k}_s": v for k, v in seconds.items()},
            "loop_over_ku": seconds["loop"] / seconds["ku"],
            "ku_over_floor": seconds["ku"] / seconds["floor"],
            "targets": {k: TARGETS[k] for k in ("loop_over_ku", "ku_over_floor")},
        }
    )

    # Two heads on one MC-dropout trunk.
    n, t = 1000, 100
    keras.utils.set_random_seed(1)
    x = rng.normal(size=(n, 8)).astype("float32")
    two, one, regression_only = two_head_models()
    seconds = timed_rounds(
        repeats,
        two_heads=lambda: ku.sample(two, x, t, verbose=0),
        one_output=lambda: ku.sample(one, x, t, verbose=0),
        regression_only=lambda: ku.sample(regression_only, x, t, verbose=0),
    )
    record(
        {
            "case": "two_heads",
            "N": n,
            "T": t,
            **{f"{k}_s": v for k, v in seconds.items()},
            "two_heads_over_one_output": seconds["two_heads"] / seconds["one_output"],
            "two_heads_over_regression_only": seconds["two_heads"]
            / seconds["regression_only"],
            "targets": {name: TARGETS[name] for name in ("two_heads_over_one_output",)},
        }
    )

    # A keras_hub backbone.
    try:
        backbone = bert_backbone()
    except ImportError:
        print("keras_hub is not installed: the backbone conversion is skipped")
        return rows
    times, reports = [], []
    for _ in range(max(3, repeats // 5)):
        start = time.perf_counter()
        _, report = ku.layers.to_mc_dropout(backbone, return_report=True)
        times.append(time.perf_counter() - start)
        reports.append(report)
    record(
        {
            "case": "bert_backbone_conversion",
            "parameters": int(backbone.count_params()),
            "converted": len(report.converted),
            "in_memory_only": len(report.in_memory_only),
            "not_converted": len(report.not_converted),
            "conversion_s": float(np.median(times)),
            "conversion_all_s": times,
            "targets": {"conversion_s": TARGETS["conversion_s"]},
        }
    )
    return rows


def markdown(rows):
    lines = [
        "| case | measurement | figure | target |",
        "|---|---|---|---|",
    ]

    def ms(seconds):
        return f"{seconds * 1000:.1f} ms"

    for row in rows:
        case = row["case"]
        if case == "lstm_forecaster":
            loop, ku_time, floor = (ms(row[k]) for k in ("loop_s", "ku_s", "floor_s"))
            lines += [
                f"| {case} | (a) loop of `model(x, training=True)` | {loop} | |",
                f"| {case} | (b) `ku.predict_regression` | {ku_time} | |",
                f"| {case} | (c) compiled tiled forward, dropout on | {floor} | |",
                f"| {case} | (a)/(b) | {row['loop_over_ku']:.2f}x | >= 10x |",
                f"| {case} | (b)/(c) | {row['ku_over_floor']:.2f}x | <= 1.3x |",
            ]
        elif case == "two_heads":
            lines += [
                f"| {case} | `ku.sample`, two outputs / one output | "
                f"{ms(row['two_heads_s'])} / {ms(row['one_output_s'])} = "
                f"{row['two_heads_over_one_output']:.2f}x | <= 1.1x |",
                f"| {case} | regression head alone | {ms(row['regression_only_s'])} "
                f"({row['two_heads_over_regression_only']:.2f}x) | |",
            ]
        else:
            lines.append(
                f"| {case} | `to_mc_dropout`, {row['parameters'] / 1e6:.1f}M "
                f"parameters | {row['conversion_s']:.2f} s | < 5 s |"
            )
    return "\n".join(lines)


def main():
    benchmark_main(__doc__, "models_users_bring", run, markdown)


if __name__ == "__main__":
    main()
