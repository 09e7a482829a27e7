"""BatchEnsemble (4 members) LeNet-5: parameters, training and prediction cost.

Run: python benchmarks/batch_ensemble.py [--repeats 5] [--output FILE]

In one run (median of `--repeats`, rounds shuffled as in `_timing.py`):

- parameters of `ku.BatchEnsemble` of a LeNet-5-sized CNN (BatchEnsembleConv2D
  6@5x5 and 16@5x5 tanh with average pooling, BatchEnsembleDense 120, 84 tanh,
  10 softmax), 4 members, against one `ku.models.lenet5(dropout_rate=0)`
  (target <= 1.1x);
- training: one epoch of `fit` (1,024 rows, batch 64, Adam, sparse categorical
  cross-entropy, after a first epoch that traces; each epoch timed by a
  callback inside a 2-epoch `fit`, the median of all) against a packed 4-member
  `ku.Ensemble` of `ku.models.lenet5(dropout_rate=0)` (target <= 1.2x); and one
  training step on one batch of each (after tracing), and of one member alone;
- prediction: `ku.predict_classification(model, x)` on the 1,024 rows (the
  engine: one pass, mixture, numpy results), one compiled forward of the
  members (`member_rows`: convolutions on folded members) and one of the
  network on the 4x-tiled rows (no folding), against one compiled forward of
  one LeNet-5 on the same 4x-tiled rows (target <= 1.2x).

Data: MNIST test digits padded to 32x32x1 from `--mnist-dir` (default
`$KERAS_UNCERTAINTY_DATA/mnist`); random images of that shape when absent.
"""

import argparse
import json
import os
import statistics
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from _timing import timed_rounds, write_report

import keras_uncertainty as ku

M, N, BATCH = 4, 1024, 64


def mnist_images(folder, n):
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


def be_lenet(m):
    layers = ku.layers
    return keras.Sequential(
        [
            keras.Input((32, 32, 1)),
            layers.BatchEnsembleConv2D(6, 5, m, activation="tanh"),
            keras.layers.AveragePooling2D(2),
            layers.BatchEnsembleConv2D(16, 5, m, activation="tanh"),
            keras.layers.AveragePooling2D(2),
            keras.layers.Flatten(),
            layers.BatchEnsembleDense(120, m, activation="tanh"),
            layers.BatchEnsembleDense(84, m, activation="tanh"),
            layers.BatchEnsembleDense(10, m, activation="softmax"),
        ],
        name="be_lenet5",
    )


def lenet_member():
    return ku.models.lenet5(dropout_rate=0.0)


def compiled(model):
    model.compile("adam", loss="sparse_categorical_crossentropy")
    return model


def run(repeats, mnist_dir):
    x, y, source = mnist_images(mnist_dir, N)
    keras.utils.set_random_seed(0)
    batch_ensemble = compiled(ku.BatchEnsemble(be_lenet, num_members=M))
    ensemble = compiled(ku.Ensemble(lenet_member, num_members=M, pack=True))
    one = compiled(lenet_member())

    epoch_times = {}

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            elapsed = time.perf_counter() - self.start
            epoch_times.setdefault(self.name, []).append(elapsed)

    def epoch(model, name=None):
        callbacks = [EpochTimer(name)] if name else []
        return lambda: model.fit(
            x, y, epochs=2, batch_size=BATCH, verbose=0, callbacks=callbacks
        )

    for model in (batch_ensemble, ensemble, one):
        epoch(model)()  # traces the training step

    params = {
        "batch_ensemble": batch_ensemble.count_params(),
        "one_member": one.count_params(),
        "packed_ensemble": ensemble.count_params(),
    }
    params["batch_ensemble_over_one"] = params["batch_ensemble"] / params["one_member"]
    print(json.dumps(params), flush=True)
    timed_rounds(
        repeats,
        warmup=False,
        batch_ensemble_epoch=epoch(batch_ensemble, "batch_ensemble_epoch"),
        packed_ensemble_epoch=epoch(ensemble, "packed_ensemble_epoch"),
        one_member_epoch=epoch(one, "one_member_epoch"),
    )
    # Each epoch timed inside `fit` (callbacks), so the per-call start of
    # `fit` is left out: the median over 2 * repeats epochs.
    training = {name: statistics.median(t) for name, t in epoch_times.items()}
    batch = (x[:BATCH], y[:BATCH])
    training.update(
        timed_rounds(
            max(20, 10 * repeats),
            step_batch_ensemble=lambda: batch_ensemble.train_on_batch(*batch),
            step_packed_ensemble=lambda: ensemble.train_on_batch(*batch),
            step_one_member=lambda: one.train_on_batch(*batch),
        )
    )
    training["epoch_batch_ensemble_over_packed"] = (
        training["batch_ensemble_epoch"] / training["packed_ensemble_epoch"]
    )
    training["step_batch_ensemble_over_packed"] = (
        training["step_batch_ensemble"] / training["step_packed_ensemble"]
    )
    training["step_batch_ensemble_over_one"] = (
        training["step_batch_ensemble"] / training["step_one_member"]
    )
    print(json.dumps(training), flush=True)

    network = batch_ensemble.network
    x_tensor = tf.constant(x)
    tiled = tf.constant(np.tile(x, (M, 1, 1, 1)))
    be_forward = tf.function(lambda t: batch_ensemble.member_rows(t, training=False))
    unfolded_forward = tf.function(lambda t: network(t, training=False))
    one_forward = tf.function(lambda t: one(t, training=False))
    prediction = timed_rounds(
        max(10, 3 * repeats),
        predict_classification=lambda: ku.predict_classification(batch_ensemble, x),
        batch_ensemble_forward=lambda: be_forward(x_tensor).numpy(),
        network_on_tiled_rows=lambda: unfolded_forward(tiled).numpy(),
        one_member_tiled_forward=lambda: one_forward(tiled).numpy(),
    )
    base = prediction["one_member_tiled_forward"]
    for name in ("predict_classification", "batch_ensemble_forward"):
        prediction[f"{name}_over_tiled_one"] = prediction[name] / base
    prediction["network_on_tiled_rows_over_tiled_one"] = (
        prediction["network_on_tiled_rows"] / base
    )
    print(json.dumps(prediction), flush=True)
    return {
        "data": source,
        "rows": N,
        "batch_size": BATCH,
        "num_members": M,
        "parameters": params,
        "training": training,
        "prediction": prediction,
    }


def markdown(r):
    p, t, q = r["parameters"], r["training"], r["prediction"]
    return "\n".join(
        [
            "| measurement | BatchEnsemble | reference | ratio | target |",
            "|---|---|---|---|---|",
            f"| parameters (4 members / one LeNet-5) | {p['batch_ensemble']} "
            f"| {p['one_member']} | {p['batch_ensemble_over_one']:.3f}x | <= 1.1x |",
            f"| one epoch of fit, {N} rows, batch {BATCH} (/ packed ku.Ensemble) "
            f"| {t['batch_ensemble_epoch']:.3f} s | {t['packed_ensemble_epoch']:.3f} s "
            f"| {t['epoch_batch_ensemble_over_packed']:.2f}x | <= 1.2x |",
            f"| one training step, batch {BATCH} (/ packed ku.Ensemble) "
            f"| {t['step_batch_ensemble'] * 1e3:.1f} ms "
            f"| {t['step_packed_ensemble'] * 1e3:.1f} ms "
            f"| {t['step_batch_ensemble_over_packed']:.2f}x | |",
            f"| one training step (/ one LeNet-5) "
            f"| {t['step_batch_ensemble'] * 1e3:.1f} ms "
            f"| {t['step_one_member'] * 1e3:.1f} ms "
            f"| {t['step_batch_ensemble_over_one']:.2f}x | |",
            f"| ku.predict_classification, {N} rows (/ one LeNet-5 on 4x-tiled "
            f"rows) | {q['predict_classification'] * 1e3:.1f} ms "
            f"| {q['one_member_tiled_forward'] * 1e3:.1f} ms "
            f"| {q['predict_classification_over_tiled_one']:.2f}x | <= 1.2x |",
            f"| compiled forward, `member_rows` (folded CNN) (/ one LeNet-5 on "
            f"4x-tiled rows) | {q['batch_ensemble_forward'] * 1e3:.1f} ms "
            f"| {q['one_member_tiled_forward'] * 1e3:.1f} ms "
            f"| {q['batch_ensemble_forward_over_tiled_one']:.2f}x | |",
            f"| compiled forward, the network on 4x-tiled rows (not folded) "
            f"| {q['network_on_tiled_rows'] * 1e3:.1f} ms "
            f"| {q['one_member_tiled_forward'] * 1e3:.1f} ms "
            f"| {q['network_on_tiled_rows_over_tiled_one']:.2f}x | |",
        ]
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--output",
        default=os.path.join("benchmarks", "results", "batch_ensemble.json"),
    )
    default_dir = os.path.join(
        os.environ.get("KERAS_UNCERTAINTY_DATA", os.path.join("..", "shared", "data")),
        "mnist",
    )
    parser.add_argument("--mnist-dir", default=default_dir)
    args = parser.parse_args()
    result = run(args.repeats, args.mnist_dir)
    write_report(args.output, args.repeats, **result)
    print(markdown(result))


if __name__ == "__main__":
    main()
