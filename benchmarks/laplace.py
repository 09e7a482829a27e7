"""Speed of last-layer KFAC Laplace on LeNet-5: fitting and the GLM predictive.

Run: python benchmarks/laplace.py [--repeats 5] [--output FILE]

LeNet-5 (`ku.models.lenet5(dropout_rate=0)`) is trained for 3 epochs on
MNIST test images 2000-9999 (8,000 images, the test-only protocol of
`keras_uncertainty/experiments/mnist.py`; `KERAS_UNCERTAINTY_DATA` points
at the data) with Adam 1e-3, batch 64. Every figure is the median wall
time of `--repeats` runs after one warm-up, the cases of a block timed in
rounds, in shuffled order (see `_timing.py`). Cases:

- train_epoch: one more epoch of `model.fit` on the 8,000 images;
- laplace_fit: `ku.laplace.Laplace(model, "classification",
  hessian="kron").fit(x, y)` on the same images: the features (one forward
  pass), the KFAC factors, and the prior precision by the marginal
  likelihood (issue 23's target: at most 2x train_epoch);
- forward: `model.predict` on test images 0-1999 (batch 256);
- glm_probit: `ku.predict_classification(laplace, ...)` on them, the one
  verb (the probit predictive, with the expected entropy from 100 draws of
  the GLM logits, in one compiled pass; issues 23 and 36: at most 1.5x
  forward);
- laplace_predict: `laplace.predict` on them (the same compiled pass; for
  reference);
- engine_weight_sampling: `ku.predict_classification(
  laplace.as_model("weights"), ..., num_samples=100)`, the same images with
  100 last-layer weight draws each (for reference: no target).
"""

import json
import os

import keras
from _timing import benchmark_main, timed_rounds

import keras_uncertainty as ku
from keras_uncertainty.experiments import mnist as protocol

EPOCHS, BATCH_SIZE, PREDICT_BATCH = 3, 64, 256
TARGET_FIT_RATIO, TARGET_PREDICT_RATIO = 2.0, 1.5


def run(repeats):
    keras.utils.set_random_seed(0)
    data = ku.datasets.load_mnist(split="test")
    x = protocol.prepare(data.images[protocol.TRAIN_IMAGES])
    y = data.labels[protocol.TRAIN_IMAGES]
    x_test = protocol.prepare(data.images[protocol.TEST_IMAGES])
    model = ku.models.lenet5(dropout_rate=0.0)
    model.compile(
        keras.optimizers.Adam(protocol.LEARNING_RATE),
        loss="sparse_categorical_crossentropy",
    )
    model.fit(x, y, epochs=EPOCHS, batch_size=BATCH_SIZE, verbose=0)

    def epoch():
        model.fit(x, y, epochs=1, batch_size=BATCH_SIZE, verbose=0)

    def fit():
        return ku.laplace.Laplace(model, "classification", hessian="kron").fit(x, y)

    fitting = timed_rounds(repeats, train_epoch=epoch, laplace_fit=fit)
    laplace = fit()
    sampled = laplace.as_model("weights")
    predicting = timed_rounds(
        repeats,
        forward=lambda: model.predict(x_test, batch_size=PREDICT_BATCH, verbose=0),
        glm_probit=lambda: ku.predict_classification(laplace, x_test, seed=0),
        laplace_predict=lambda: laplace.predict(x_test, seed=0),
        engine_weight_sampling=lambda: ku.predict_classification(
            sampled, x_test, num_samples=100, seed=0
        ),
    )
    labels = laplace.predict(x_test, seed=0).label
    accuracy = float((labels == data.labels[protocol.TEST_IMAGES]).mean())
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    rows = []
    for case, seconds in {**fitting, **predicting}.items():
        row = {"case": case, "seconds": seconds, "load_average_1min": load}
        if case == "laplace_fit":
            row["ratio"] = seconds / fitting["train_epoch"]
            row["target_ratio"] = TARGET_FIT_RATIO
            row["meets_target"] = row["ratio"] <= TARGET_FIT_RATIO
            row["prior_precision"] = laplace.prior_precision_
        elif case in ("glm_probit", "laplace_predict", "engine_weight_sampling"):
            row["ratio"] = seconds / predicting["forward"]
            if case == "glm_probit":
                row["target_ratio"] = TARGET_PREDICT_RATIO
                row["meets_target"] = row["ratio"] <= TARGET_PREDICT_RATIO
                row["test_accuracy"] = accuracy
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def markdown(rows):
    lines = ["| case | median | ratio | target |", "|---|---|---|---|"]
    for row in rows:
        ratio = f"{row['ratio']:.2f}x" if "ratio" in row else ""
        target = f"<= {row['target_ratio']}x" if "target_ratio" in row else ""
        lines.append(
            f"| {row['case']} | {row['seconds'] * 1000:.0f} ms | {ratio} | {target} |"
        )
    return "\n".join(lines)


def main():
    benchmark_main(__doc__, "laplace", run, markdown)


if __name__ == "__main__":
    main()
