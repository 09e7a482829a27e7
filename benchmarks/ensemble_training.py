"""Training and prediction speed of ku.Ensemble against one and M plain fits.

Run: python benchmarks/ensemble_training.py [--repeats 3] [--output FILE]

In one run, median of `--repeats` (each from fresh models, so every figure
includes building, compiling and tracing, as a user pays them):

- one member, plain Keras `fit`: MLP 8 -> 50 (relu) -> 2 (mean, log-variance),
  `ku.losses.gaussian_nll`, Adam, N=1000, batch 128, 40 epochs;
- `ku.Ensemble` of 5 such members, one `fit`;
- the same 5 members trained one after another with plain `fit`;
- prediction: `ku.predict_regression(ensemble, x)` on N=10,000 against one
  compiled forward pass of the stacked model (`tf.function(ensemble)`);
- LeNet-5 (`ku.models.lenet5(dropout_rate=0)`, the deterministic ensemble
  member): one member's plain `fit`, the packed 5-member `ku.Ensemble` fit
  (packed convolutions) and the 5 members one after another, on 512 MNIST
  test digits padded to 32x32x1 (`--mnist-dir`, default ../shared/data/mnist;
  random images of that shape when absent), batch 64, 2 epochs, Adam,
  sparse categorical cross-entropy.
"""

import argparse
import json
import os
import sys

import numpy as np
import tensorflow as tf
from _timing import timed_rounds, write_report

import keras_uncertainty as ku
from keras_uncertainty.models import mlp

NUM_MEMBERS, N, BATCH, EPOCHS = 5, 1000, 128, 40
LENET_N, LENET_BATCH, LENET_EPOCHS = 512, 64, 2


def member():
    return mlp(8, 2, hidden_units=(50,), dropout_rate=0.0)


def data(rng, n):
    x = rng.normal(size=(n, 8)).astype("float32")
    y = (x @ rng.normal(size=(8, 1)) + 0.3 * rng.normal(size=(n, 1))).astype("float32")
    return x, y


def fit_one(x, y):
    model = member()
    model.compile("adam", loss=ku.losses.gaussian_nll)
    model.fit(x, y, epochs=EPOCHS, batch_size=BATCH, verbose=0)


def fit_ensemble(x, y):
    ensemble = ku.Ensemble(member, num_members=NUM_MEMBERS)
    ensemble.compile("adam", loss=ku.losses.gaussian_nll)
    ensemble.fit(x, y, epochs=EPOCHS, batch_size=BATCH, verbose=0)


def fit_sequential(x, y):
    for _ in range(NUM_MEMBERS):
        fit_one(x, y)


def mnist_images(folder, n):
    """`n` MNIST test digits as `(n, 32, 32, 1)` floats in [0, 1], and labels;
    random images of that shape (and labels) when `folder` has no MNIST."""
    try:
        digits = ku.datasets.load_mnist(folder, split="test")
        images = digits.images[:n].astype("float32") / 255.0
        images = np.pad(images, ((0, 0), (2, 2), (2, 2)))[..., None]
        return images, digits.labels[:n].astype("int32"), "mnist"
    except Exception as error:  # any failure: the timing needs only shapes
        print(f"MNIST not read ({error}); random images", file=sys.stderr)
        rng = np.random.default_rng(0)
        images = rng.uniform(size=(n, 32, 32, 1)).astype("float32")
        return images, rng.integers(0, 10, size=n).astype("int32"), "random"


def lenet_member():
    return ku.models.lenet5(dropout_rate=0.0)


def fit_lenet_one(x, y):
    model = lenet_member()
    model.compile("adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=LENET_EPOCHS, batch_size=LENET_BATCH, verbose=0)


def fit_lenet_ensemble(x, y):
    ensemble = ku.Ensemble(lenet_member, num_members=NUM_MEMBERS, pack=True)
    ensemble.compile("adam", loss="sparse_categorical_crossentropy")
    ensemble.fit(x, y, epochs=LENET_EPOCHS, batch_size=LENET_BATCH, verbose=0)


def fit_lenet_sequential(x, y):
    for _ in range(NUM_MEMBERS):
        fit_lenet_one(x, y)


def run_lenet(repeats, mnist_dir):
    x, y, source = mnist_images(mnist_dir, LENET_N)
    fit_lenet_one(x, y)  # warm-up: first-use costs of the convolutions
    lenet = timed_rounds(
        repeats,
        warmup=False,
        one_member=lambda: fit_lenet_one(x, y),
        ensemble=lambda: fit_lenet_ensemble(x, y),
        sequential=lambda: fit_lenet_sequential(x, y),
    )
    # Steady state, tracing excluded: one training step on one batch.
    one, ensemble = lenet_member(), ku.Ensemble(lenet_member, NUM_MEMBERS, pack=True)
    for model in (one, ensemble):
        model.compile("adam", loss="sparse_categorical_crossentropy")
    batch = (x[:LENET_BATCH], y[:LENET_BATCH])
    steps = timed_rounds(
        max(20, 10 * repeats),
        step_one_member=lambda: one.train_on_batch(*batch),
        step_ensemble=lambda: ensemble.train_on_batch(*batch),
    )
    lenet.update(steps)
    lenet["step_ensemble_over_one"] = steps["step_ensemble"] / steps["step_one_member"]
    lenet["ensemble_over_one"] = lenet["ensemble"] / lenet["one_member"]
    lenet["sequential_over_ensemble"] = lenet["sequential"] / lenet["ensemble"]
    lenet["data"] = source
    print(json.dumps(lenet), flush=True)
    return lenet


def run(repeats):
    rng = np.random.default_rng(0)
    x, y = data(rng, N)
    fit_one(x, y)  # warm-up: imports and first-use costs
    training = timed_rounds(
        repeats,
        warmup=False,
        one_member=lambda: fit_one(x, y),
        ensemble=lambda: fit_ensemble(x, y),
        sequential=lambda: fit_sequential(x, y),
    )
    training["ensemble_over_one"] = training["ensemble"] / training["one_member"]
    training["sequential_over_ensemble"] = training["sequential"] / training["ensemble"]
    print(json.dumps(training), flush=True)

    x_test, _ = data(rng, 10_000)
    ensemble = ku.Ensemble(member, num_members=NUM_MEMBERS)
    ensemble.compile("adam", loss=ku.losses.gaussian_nll)
    ensemble.fit(x, y, epochs=1, batch_size=BATCH, verbose=0)
    stacked = tf.function(lambda batch: ensemble(batch, training=False))
    x_tensor = tf.constant(x_test)
    prediction = timed_rounds(
        max(15, 5 * repeats),
        predict_regression=lambda: ku.predict_regression(ensemble, x_test),
        stacked_forward=lambda: stacked(x_tensor),
    )
    prediction["predict_over_forward"] = (
        prediction["predict_regression"] / prediction["stacked_forward"]
    )
    print(json.dumps(prediction), flush=True)
    return training, prediction


def markdown(training, prediction, lenet):
    return "\n".join(
        [
            "| measurement | seconds | ratio | target |",
            "|---|---|---|---|",
            f"| one member, plain `fit` | {training['one_member']:.2f} | 1.00x | |",
            f"| `ku.Ensemble`, {NUM_MEMBERS} members, one `fit` "
            f"| {training['ensemble']:.2f} | {training['ensemble_over_one']:.2f}x "
            "of one member | <= 1.5x |",
            f"| {NUM_MEMBERS} members one after another "
            f"| {training['sequential']:.2f} "
            f"| {training['sequential_over_ensemble']:.2f}x the ensemble | >= 3x |",
            f"| `ku.predict_regression(ens, x)`, N=10,000 "
            f"| {prediction['predict_regression'] * 1000:.1f} ms "
            f"| {prediction['predict_over_forward']:.2f}x of the stacked forward "
            "| <= 1.5x |",
            f"| one compiled forward pass of the stacked model "
            f"| {prediction['stacked_forward'] * 1000:.1f} ms | 1.00x | |",
            f"| LeNet-5, one member, plain `fit` | {lenet['one_member']:.2f} "
            "| 1.00x | |",
            f"| LeNet-5 `ku.Ensemble`, {NUM_MEMBERS} members (packed "
            f"convolutions), one `fit` | {lenet['ensemble']:.2f} "
            f"| {lenet['ensemble_over_one']:.2f}x of one member | <= 2x |",
            f"| LeNet-5, {NUM_MEMBERS} members one after another "
            f"| {lenet['sequential']:.2f} "
            f"| {lenet['sequential_over_ensemble']:.2f}x the ensemble | >= 2.5x |",
            f"| LeNet-5, one training step (batch 64, after tracing): one member "
            f"/ packed ensemble | {lenet['step_one_member'] * 1000:.1f} ms / "
            f"{lenet['step_ensemble'] * 1000:.1f} ms "
            f"| {lenet['step_ensemble_over_one']:.2f}x | |",
        ]
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--output",
        default=os.path.join("benchmarks", "results", "ensemble_training.json"),
    )
    parser.add_argument(
        "--mnist-dir",
        default=os.path.join("..", "shared", "data", "mnist"),
        help="folder of the MNIST test IDX files (LeNet-5 case)",
    )
    args = parser.parse_args()
    training, prediction = run(args.repeats)
    lenet = run_lenet(args.repeats, args.mnist_dir)
    write_report(
        args.output,
        args.repeats,
        training=training,
        prediction=prediction,
        lenet5_training=lenet,
    )
    print(markdown(training, prediction, lenet))


if __name__ == "__main__":
    main()
