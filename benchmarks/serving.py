"""Speed of the serving paths: streamed datasets and exported SavedModels.

Run: python benchmarks/serving.py [--repeats 15] [--output FILE]

Every figure is the median wall time of `--repeats` runs after one warm-up,
with the variants of a case timed in shuffled rounds in one process, so the
ratios compare like with like on a shared, noisy machine. Both cases use the
regression MLP of `mc_sampling.py` (8 inputs, MCDropout, Dense 50,
MCDropout, Dense 2: mean and log-variance).

- streamed_dataset: `ku.predict_regression` on a `tf.data.Dataset` of
  N=10,000 rows in batches of 500, against the same call on the arrays;
  T=100. Target: at most 1.2x.
- exported_signature: one call of the `serve` endpoint of `ku.export`
  (loaded with `tf.saved_model.load` in this process) on N=1,000 rows,
  against `ku.predict_regression` on the same model; T=100. Target: at most
  1.3x.
"""

import json
import os
import tempfile

import numpy as np
import tensorflow as tf
from _timing import benchmark_main, timed_rounds

import keras_uncertainty as ku
from keras_uncertainty.models import mlp

TARGETS = {"streamed_dataset": 1.2, "exported_signature": 1.3}


def run(repeats):
    rng = np.random.default_rng(0)
    model = mlp(8, 2, hidden_units=(50,), dropout_rate=0.1)
    rows = []

    def record(case, n, t, baseline, variant, seconds):
        row = {
            "case": case,
            "N": n,
            "T": t,
            "baseline": baseline,
            "variant": variant,
            "baseline_s": seconds["baseline"],
            "variant_s": seconds["variant"],
            "ratio": seconds["variant"] / seconds["baseline"],
            "target": TARGETS[case],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    n, t = 10_000, 100
    x = rng.normal(size=(n, 8)).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(500)
    record(
        "streamed_dataset",
        n,
        t,
        "ku.predict_regression(arrays)",
        "ku.predict_regression(tf.data, batches of 500)",
        timed_rounds(
            repeats,
            baseline=lambda: ku.predict_regression(model, x, t, verbose=0),
            variant=lambda: ku.predict_regression(model, dataset, t, verbose=0),
        ),
    )

    n = 1000
    x = rng.normal(size=(n, 8)).astype("float32")
    with tempfile.TemporaryDirectory() as folder:
        path = ku.export(model, os.path.join(folder, "1"), "regression", t)
        served = tf.saved_model.load(path)
        inputs = tf.constant(x)
        record(
            "exported_signature",
            n,
            t,
            "ku.predict_regression",
            "SavedModel serve()",
            timed_rounds(
                repeats,
                baseline=lambda: ku.predict_regression(model, x, t, verbose=0),
                variant=lambda: {k: v.numpy() for k, v in served.serve(inputs).items()},
            ),
        )
    return rows


def markdown(rows):
    lines = [
        "| case | N | T | baseline | variant | baseline time | variant time "
        "| variant/baseline | target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['case']} | {row['N']} | {row['T']} | {row['baseline']} "
            f"| {row['variant']} | {row['baseline_s'] * 1000:.1f} ms "
            f"| {row['variant_s'] * 1000:.1f} ms | {row['ratio']:.2f}x "
            f"| <= {row['target']}x |"
        )
    return "\n".join(lines)


def main():
    benchmark_main(__doc__, "serving", run, markdown)


if __name__ == "__main__":
    main()
