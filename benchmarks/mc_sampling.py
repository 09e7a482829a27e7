"""Speed of Monte Carlo prediction: the article's loop, ku.predict_*, the floor.

Run: python benchmarks/mc_sampling.py [--repeats 7] [--output FILE]

Every figure is the median wall time of `--repeats` runs after one warm-up
(which pays for tracing), all taken in one process so that the ratios compare
like with like on a shared, noisy machine; the variants of a case are timed
in rounds, in shuffled order (the slow eager loops in a block of their own). Cases:

- mlp_regression: 8 inputs, MCDropout, Dense 50, MCDropout, Dense 2 (mean and
  log-variance), N=1000, T=100.
- lenet5: the MNIST LeNet-5 with MCSpatialDropout2D, 1000 inputs, T=50.
- last_layer_cnn: a small CNN with MCDropout only before its final Dense,
  N=500, T=50 (where computing the deterministic prefix once pays off).
- mlp_classifier: 8-50-10 with MC dropout, N=1000, T=100, against
  uncertainty-wizard's `predict_quantified(quantifier="mutual_information")`
  (installed only for this benchmark: `pip install --no-deps
  uncertainty-wizard==0.4.0`; skipped with a note when missing).

Columns: (a) the article's loop, T eager `model(x, training=True)` calls
combined in numpy; (b) `ku.predict_regression` / `ku.predict_classification`;
(c) the floor, one compiled plain forward pass over the pre-tiled T*N rows.
"""

import json

import keras
import numpy as np
import tensorflow as tf
from _timing import benchmark_main, timed_rounds

import keras_uncertainty as ku
from keras_uncertainty.models import lenet5, mlp


def article_loop_regression(model, x, num_samples):
    """The article's recipe: T eager calls in training mode, numpy combination."""
    outs = np.stack([model(x, training=True).numpy() for _ in range(num_samples)])
    mu, var = outs[..., :1], np.exp(outs[..., 1:])
    mean = mu.mean(0)
    return mean, np.sqrt((var + mu**2).mean(0) - mean**2)


def article_loop_classification(model, x, num_samples):
    probs = np.stack([model(x, training=True).numpy() for _ in range(num_samples)])
    mean = probs.mean(0)
    entropy = -(mean * np.log(mean + 1e-12)).sum(-1)
    expected = -(probs * np.log(probs + 1e-12)).sum(-1).mean(0)
    return mean, entropy - expected


def floor(model, x, num_samples):
    """One compiled plain forward pass over the tiled batch of T*N rows."""
    tiled = tf.constant(np.tile(x, (num_samples,) + (1,) * (x.ndim - 1)))
    forward = tf.function(lambda batch: model(batch, training=False))
    return lambda: forward(tiled)


def last_layer_cnn():
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            ku.layers.MCDropout(0.5),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="last_layer_cnn",
    )


def uncertainty_wizard_classifier(weights_from):
    try:
        import uncertainty_wizard as uwiz
    except ImportError:
        return None
    model = uwiz.models.StochasticSequential()
    model.add(keras.Input((8,)))
    model.add(keras.layers.Dropout(0.1))
    model.add(keras.layers.Dense(50, activation="relu"))
    model.add(keras.layers.Dropout(0.1))
    model.add(keras.layers.Dense(10, activation="softmax"))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.inner.set_weights(weights_from.get_weights())
    return model


def run(repeats):
    rng = np.random.default_rng(0)
    rows = []

    def record(case, n, t, **seconds):
        row = {"case": case, "N": n, "T": t}
        row.update({f"{k}_s": v for k, v in seconds.items()})
        b = seconds["ku"]
        if "loop" in seconds:
            row["loop_over_ku"] = seconds["loop"] / b
        if "floor" in seconds:
            row["ku_over_floor"] = b / seconds["floor"]
        if "uwiz" in seconds:
            row["uwiz_over_ku"] = seconds["uwiz"] / b
            row["uwiz_default_over_ku"] = seconds["uwiz_default"] / b
        rows.append(row)
        print(json.dumps(row), flush=True)

    n, t = 1000, 100
    x = rng.normal(size=(n, 8)).astype("float32")
    model = mlp(8, 2, hidden_units=(50,), dropout_rate=0.1)
    record(
        "mlp_regression",
        n,
        t,
        **timed_rounds(
            max(3, repeats // 3), loop=lambda: article_loop_regression(model, x, t)
        ),
        **timed_rounds(
            repeats,
            ku=lambda: ku.predict_regression(model, x, t),
            floor=floor(model, x, t),
        ),
    )

    n, t = 1000, 50
    x = rng.normal(size=(n, 32, 32, 1)).astype("float32")
    model = lenet5()
    record(
        "lenet5",
        n,
        t,
        **timed_rounds(
            max(3, repeats // 3),
            loop=lambda: article_loop_classification(model, x, t),
        ),
        **timed_rounds(
            repeats,
            ku=lambda: ku.predict_classification(model, x, t),
            floor=floor(model, x, t),
        ),
    )

    n, t = 500, 50
    x = rng.normal(size=(n, 28, 28, 1)).astype("float32")
    model = last_layer_cnn()
    record(
        "last_layer_cnn",
        n,
        t,
        **timed_rounds(
            repeats,
            ku=lambda: ku.predict_classification(model, x, t),
            floor=floor(model, x, t),
        ),
    )

    n, t = 1000, 100
    x = rng.normal(size=(n, 8)).astype("float32")
    model = mlp(
        8, 10, hidden_units=(50,), dropout_rate=0.1, output_activation="softmax"
    )
    wizard = uncertainty_wizard_classifier(model)
    fns = {
        "ku": lambda: ku.predict_classification(model, x, t),
        "floor": floor(model, x, t),
    }
    if wizard is None:
        print(
            "uncertainty-wizard is not installed: `pip install --no-deps "
            "uncertainty-wizard==0.4.0` to compare with it"
        )
    else:
        # Its default batch_size (32 inputs per step) and one step for all
        # N inputs (its fastest setting here).
        fns["uwiz"] = lambda: wizard.predict_quantified(
            x, quantifier="mutual_information", sample_size=t, batch_size=n
        )
        fns["uwiz_default"] = lambda: wizard.predict_quantified(
            x, quantifier="mutual_information", sample_size=t
        )
    record(
        "mlp_classifier_mutual_information",
        n,
        t,
        **timed_rounds(repeats, **fns),
    )
    return rows


def markdown(rows):
    lines = [
        "| case | N | T | (a) article loop | (b) ku.predict_* | (c) floor "
        "| uncertainty-wizard (batch N / default 32) | (a)/(b) | (b)/(c) "
        "| uwiz/(b) (batch N / default 32) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def ms(row, key):
        return f"{row[key] * 1000:.1f} ms" if key in row else ""

    def ratio(row, key):
        return f"{row[key]:.2f}x" if key in row else ""

    for row in rows:
        lines.append(
            f"| {row['case']} | {row['N']} | {row['T']} | {ms(row, 'loop_s')} "
            f"| {ms(row, 'ku_s')} | {ms(row, 'floor_s')} "
            f"| {ms(row, 'uwiz_s')} {ms(row, 'uwiz_default_s')} "
            f"| {ratio(row, 'loop_over_ku')} | {ratio(row, 'ku_over_floor')} "
            f"| {ratio(row, 'uwiz_over_ku')} {ratio(row, 'uwiz_default_over_ku')} |"
        )
    return "\n".join(lines)


def main():
    benchmark_main(__doc__, "mc_sampling", run, markdown)


if __name__ == "__main__":
    main()
