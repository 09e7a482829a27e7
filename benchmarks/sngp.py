"""Cost of SNGP: one-pass prediction and the covariance-update epoch.

Run: python benchmarks/sngp.py [--repeats 15] [--output FILE]

Every figure is the median wall time of `--repeats` runs after one warm-up,
the variants of a case timed in rounds in shuffled order, in one process.
Each case builds the same backbone twice: "det" with a Dense softmax head,
"sngp" with every hidden Dense/Conv wrapped in
`ku.layers.SNGPSpectralNormalization` and a
`ku.layers.RandomFeatureGaussianProcess` head (D random features, 10
classes), as `ku.sngp.SNGPModel`. Cases:

- cnn: 28x28x1 inputs, Conv 32, Conv 32, pool, Conv 64, pool, Dense 128
  (the last-layer CNN of mc_sampling.py), D = 1024.
- mlp: 32 inputs, Dense 128, Dense 128, D = 1024: a backbone far cheaper than
  the GP head (the head's `phi Sigma phi^T` is D^2 = 1M multiply-adds per
  row, the backbone 20K), to show where the ratio goes when it dominates.
- mlp_d128: the same MLP with D = 128 random features (64x fewer
  multiply-adds in the head's variance).

Columns: predict, `ku.predict_classification(model, x)` (one pass for both:
the deterministic model gives one sample too); forward, one compiled
`model(x, training=False)` call (no engine); epoch, one `fit` epoch of
N_train rows in batches of 128, "sngp" with the covariance accumulation,
"sngp_nocov" the same model with the accumulation switched off (to isolate
it); inverse, the one-off covariance inversion (D x D, float64) paid by the
first prediction after training.
"""

import json
import warnings

import keras
import numpy as np
import tensorflow as tf
from _timing import benchmark_main, timed_rounds

import keras_uncertainty as ku

SN = ku.layers.SNGPSpectralNormalization


class _NoCovarianceGP(ku.layers.RandomFeatureGaussianProcess):
    """The GP head without the precision update (benchmark only)."""

    def _update_precision(self, features, logits):
        return None


def _backbone(kind, inputs, wrap):
    def w(layer):
        return SN(layer, 0.95) if wrap else layer

    if kind == "cnn":
        h = w(keras.layers.Conv2D(32, 3, activation="relu"))(inputs)
        h = w(keras.layers.Conv2D(32, 3, activation="relu"))(h)
        h = keras.layers.MaxPooling2D(2)(h)
        h = w(keras.layers.Conv2D(64, 3, activation="relu"))(h)
        h = keras.layers.MaxPooling2D(2)(h)
        h = keras.layers.Flatten()(h)
        return w(keras.layers.Dense(128, activation="relu"))(h)
    h = w(keras.layers.Dense(128, activation="relu"))(inputs)
    return w(keras.layers.Dense(128, activation="relu"))(h)


def build(kind, head, num_inducing=1024):
    keras.utils.set_random_seed(0)
    shape = (28, 28, 1) if kind == "cnn" else (32,)
    inputs = keras.Input(shape)
    if head == "det":
        h = _backbone(kind, inputs, wrap=False)
        model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(h))
    else:
        gp_class = _NoCovarianceGP if head == "sngp_nocov" else None
        gp_class = gp_class or ku.layers.RandomFeatureGaussianProcess
        h = _backbone(kind, inputs, wrap=True)
        model = ku.sngp.SNGPModel(inputs, gp_class(10, num_inducing, seed=0)(h))
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


def run_case(kind, n_predict, n_train, repeats, rng, num_inducing=1024):
    shape = (28, 28, 1) if kind == "cnn" else (32,)
    x = rng.normal(size=(n_predict, *shape)).astype("float32")
    x_train = rng.normal(size=(n_train, *shape)).astype("float32")
    y_train = rng.integers(0, 10, n_train)
    models = {h: build(kind, h, num_inducing) for h in ("det", "sngp", "sngp_nocov")}
    for model in models.values():
        model.fit(x_train, y_train, epochs=1, batch_size=128, verbose=0)
    gp = models["sngp"].gaussian_process_layers()[0]
    xt = tf.constant(x)
    forwards = {
        h: tf.function(lambda batch, m=models[h]: m(batch, training=False))
        for h in ("det", "sngp")
    }

    def fit_once(h):
        return lambda: models[h].fit(
            x_train, y_train, epochs=1, batch_size=128, verbose=0
        )

    epoch = timed_rounds(repeats, **{h: fit_once(h) for h in models})
    inverse = timed_rounds(repeats, inverse=lambda: gp.update_covariance().numpy())
    models["sngp"].update_covariance()
    predict = timed_rounds(
        repeats,
        det=lambda: ku.predict_classification(models["det"], x, verbose=0),
        sngp=lambda: ku.predict_classification(models["sngp"], x, verbose=0),
    )
    forward = timed_rounds(
        repeats, **{h: (lambda f=f: f(xt).numpy()) for h, f in forwards.items()}
    )
    return {
        "case": kind if num_inducing == 1024 else f"{kind}_d{num_inducing}",
        "num_inducing": num_inducing,
        "N_predict": n_predict,
        "N_train": n_train,
        "predict_det_s": predict["det"],
        "predict_sngp_s": predict["sngp"],
        "predict_ratio": predict["sngp"] / predict["det"],
        "forward_det_s": forward["det"],
        "forward_sngp_s": forward["sngp"],
        "forward_ratio": forward["sngp"] / forward["det"],
        "epoch_det_s": epoch["det"],
        "epoch_sngp_s": epoch["sngp"],
        "epoch_sngp_nocov_s": epoch["sngp_nocov"],
        "epoch_ratio_vs_det": epoch["sngp"] / epoch["det"],
        "epoch_ratio_covariance_update": epoch["sngp"] / epoch["sngp_nocov"],
        "covariance_inverse_s": inverse["inverse"],
    }


def run(repeats):
    rng = np.random.default_rng(0)
    rows = []
    warnings.simplefilter("ignore")  # the deterministic model's one-sample note
    cases = (
        ("cnn", 2000, 2048, 1024),
        ("mlp", 20000, 16384, 1024),
        ("mlp", 20000, 16384, 128),
    )
    for kind, n_predict, n_train, num_inducing in cases:
        row = run_case(kind, n_predict, n_train, repeats, rng, num_inducing)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def markdown(rows):
    lines = [
        "| case | predict sngp / det | forward sngp / det | epoch sngp / det "
        "| epoch with / without covariance | inverse (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['predict_ratio']:.2f}x | {r['forward_ratio']:.2f}x "
            f"| {r['epoch_ratio_vs_det']:.2f}x "
            f"| {r['epoch_ratio_covariance_update']:.2f}x "
            f"| {r['covariance_inverse_s']:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    benchmark_main(__doc__, "sngp", run, markdown)
