"""Cost of SNGP: one-pass prediction and the covariance-update epoch.

Run: python benchmarks/sngp.py [--repeats 15] [--output FILE]
     python benchmarks/sngp.py quality [--seeds 3] [--output FILE]

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

`quality` (issue #37): does SNGP at the defaults a user gets from the docs
train as well as the plain network? On "gratings", a 10-class 32x32 image
task built here (seeded, no download: a noisy Gabor grating at one of 10
orientations 18 degrees apart, +/-5.4 degrees of jitter, random frequency,
phase, position, width and contrast, white noise of std 0.6; 10,000
training, 2,000 validation and 2,000 test images) a small CNN (Conv 32, 64,
64 with 3x3 kernels, ReLU and max pooling, Dense 128; Adam 1e-3, batch 64,
5 epochs) is trained three ways: "plain" (a Dense softmax head),
"sngp_old" (every weighted layer in `SNGPSpectralNormalization(layer,
0.95)`, the head `RandomFeatureGaussianProcess(10,
scale_random_features=True, gp_cov_likelihood="logistic")`: the defaults
in 0.2) and "sngp" (every weighted layer in
`SNGPSpectralNormalization(layer)` and `RandomFeatureGaussianProcess(10)`,
today's defaults). Columns: test accuracy, ECE (15 bins), NLL, and the
AUROC of the predictive entropy between the test images and 2,000
out-of-distribution images (white noise smoothed by a 3x3 box filter, no
grating), each the mean over `--seeds` seeds (min-max in brackets).
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


# -- quality: SNGP at its defaults against the plain network ------------------

GRATINGS_NOISE = 0.6
GRATINGS_SPLITS = {
    "train": (0, 10000),
    "validation": (10000, 12000),
    "test": (12000, 14000),
}
# The defaults of 0.2 (issue 37), spelled out.
OLD_BOUND = 0.95
OLD_HEAD = {"scale_random_features": True, "gp_cov_likelihood": "logistic"}


def gratings(count=14000, seed=0, noise=GRATINGS_NOISE):
    """`(images (count, 32, 32, 1) float32, labels (count,))`: noisy oriented
    Gabor gratings, class k at `18 k` degrees (+/-5.4), seeded."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, count)
    theta = (labels + rng.uniform(-0.3, 0.3, count)) * np.pi / 10
    freq = rng.uniform(0.1, 0.3, count)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, count)[:, None, None]
    cx, cy = (c[:, None, None] for c in rng.uniform(-6, 6, (2, count)))
    width = rng.uniform(4, 9, count)[:, None, None]
    contrast = rng.uniform(0.4, 1.0, count)[:, None, None]
    yy, xx = (g[None] for g in np.mgrid[0:32, 0:32] - 15.5)
    along = xx * np.cos(theta)[:, None, None] + yy * np.sin(theta)[:, None, None]
    envelope = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * width**2))
    images = contrast * np.cos(2 * np.pi * freq * along + phase) * envelope
    images = images + noise * rng.normal(size=images.shape)
    return images[..., None].astype("float32"), labels


def smooth_noise(count=2000, seed=1):
    """Out-of-distribution images: white noise through a 3x3 box filter
    (times 3, about the gratings' pixel spread), no grating."""
    noise = np.random.default_rng(seed).normal(size=(count, 32, 32, 1))
    pool = keras.layers.AveragePooling2D(3, 1, padding="same")
    pooled = pool(noise.astype("float32"))
    return 3.0 * keras.ops.convert_to_numpy(pooled)


def small_cnn(head, seed=0):
    """The quality benchmark's CNN with `head` in ("plain", "sngp_old",
    "sngp")."""
    keras.utils.set_random_seed(seed)

    def w(layer):
        if head == "plain":
            return layer
        if head == "sngp_old":
            return SN(layer, OLD_BOUND)
        return SN(layer)

    inputs = keras.Input((32, 32, 1))
    h = inputs
    for filters in (32, 64, 64):
        h = w(keras.layers.Conv2D(filters, 3, padding="same", activation="relu"))(h)
        h = keras.layers.MaxPooling2D(2)(h)
    h = w(keras.layers.Dense(128, activation="relu"))(keras.layers.Flatten()(h))
    if head == "plain":
        return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(h))
    kwargs = OLD_HEAD if head == "sngp_old" else {}
    gp = ku.layers.RandomFeatureGaussianProcess(10, **kwargs)
    return ku.sngp.SNGPModel(inputs, gp(h))


def quality_row(head, seed, split="test", epochs=5):
    x, y = gratings()
    train = slice(*GRATINGS_SPLITS["train"])
    evaluated = slice(*GRATINGS_SPLITS[split])
    model = small_cnn(head, seed)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    callbacks = [] if head == "plain" else [ku.sngp.SNGPCovarianceReset()]
    model.fit(
        x[train],
        y[train],
        epochs=epochs,
        batch_size=64,
        verbose=0,
        callbacks=callbacks,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the plain network's one-sample note
        near = ku.predict_classification(model, x[evaluated], verbose=0)
        far = ku.predict_classification(model, smooth_noise(), verbose=0)
    labels = y[evaluated]
    is_far = np.r_[np.zeros(len(labels)), np.ones(len(far.entropy))]
    return {
        "head": head,
        "seed": seed,
        "split": split,
        "accuracy": float(np.mean(near.label == labels)),
        "ece": float(ku.metrics.expected_calibration_error(labels, near.probs)),
        "nll": float(ku.metrics.classification_nll(labels, near.probs)),
        "ood_auroc_entropy": float(
            ku.metrics.auroc(is_far, np.r_[near.entropy, far.entropy])
        ),
    }


def quality(seeds, split="test"):
    rows = []
    for seed in range(seeds):
        for head in ("plain", "sngp_old", "sngp"):
            row = quality_row(head, seed, split)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def quality_markdown(rows):
    lines = [
        "| network | accuracy (%) | ECE | NLL | OOD AUROC (entropy) |",
        "|---|---|---|---|---|",
    ]
    names = {
        "plain": "plain CNN, softmax",
        "sngp_old": "SNGP, defaults of 0.2",
        "sngp": "SNGP, today's defaults",
    }
    for head, name in names.items():
        cells = []
        for key, scale, digits in (
            ("accuracy", 100, 1),
            ("ece", 1, 3),
            ("nll", 1, 3),
            ("ood_auroc_entropy", 1, 3),
        ):
            values = [r[key] * scale for r in rows if r["head"] == head]
            cells.append(
                f"{np.mean(values):.{digits}f} "
                f"({min(values):.{digits}f}-{max(values):.{digits}f})"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def quality_main():
    import argparse

    from _timing import write_report

    parser = argparse.ArgumentParser(description="SNGP quality on gratings")
    parser.add_argument("command", choices=["quality"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--split", default="test", choices=["validation", "test"])
    parser.add_argument(
        "--output", default="benchmarks/results/sngp_quality.json"
    )
    args = parser.parse_args()
    rows = quality(args.seeds, args.split)
    write_report(args.output, 0, rows=rows)
    print(quality_markdown(rows))


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "quality":
        quality_main()
    else:
        benchmark_main(__doc__, "sngp", run, markdown)
