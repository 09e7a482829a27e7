"""Speed of conformal calibration, prediction and serving (`ku.conformal`).

Run: python benchmarks/conformal.py [--repeats 15] [--output FILE]

Every figure is the median wall time of `--repeats` runs after one warm-up,
the cases of a group timed in shuffled rounds in one process.

- fit_split / fit_normalized: `SplitConformalRegressor.fit` and
  `NormalizedConformalRegressor.fit` on a `ku.RegressionPrediction` of
  N=100,000 calibration points (one target). Target: under 50 ms.
- fit_aps / fit_raps and predict_aps / predict_raps: `ConformalClassifier`
  with `score="aps"` / `"raps"` (non-randomized) on N=100,000 x C=10
  probabilities, `fit` on the calibration set and `predict_set` on as many
  new points. Target: under 200 ms.
- exported_signature: one call of the `serve` endpoint of `ku.export(...,
  conformal=fitted)` (loaded with `tf.saved_model.load` in this process) on
  N=1,000 rows, T=100, against the same export without `conformal`: the
  regression MLP of `mc_sampling.py` with `NormalizedConformalRegressor`,
  and a 10-class softmax MLP with RAPS sets (at least 41 rounds: the ratio
  of two ~50 ms calls is noisy on a shared machine). Target: at most 1.1x.
  Beside it, the in-graph conformal part alone (a `tf.function` of the
  same computation on the served summary), the overhead the ratio measures.
"""

import json
import os
import tempfile

import numpy as np
import tensorflow as tf
from _timing import benchmark_main, timed_rounds

import keras_uncertainty as ku
from keras_uncertainty.conformal.serving import serving_outputs
from keras_uncertainty.models import mlp

N = 100_000
C = 10
TARGETS_S = {"fit": 0.05, "sets": 0.2}
TARGET_RATIO = 1.1


def _regression_prediction(rng, n):
    mean = rng.normal(size=(n, 1))
    std = rng.uniform(0.5, 1.5, size=(n, 1))
    y = mean + std * rng.normal(size=(n, 1))
    zeros = np.zeros_like(std)
    return ku.RegressionPrediction(mean, std, std, zeros), y


def _probs(rng, n):
    logits = 2.0 * rng.normal(size=(n, C))
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    labels = rng.integers(0, C, size=n)
    return probs, labels


def run(repeats):
    rng = np.random.default_rng(0)
    rows = []

    def record(case, n, seconds, target_s=None, baseline_s=None):
        row = {"case": case, "N": n, "seconds": seconds}
        if target_s is not None:
            row.update(target_s=target_s, meets_target=seconds < target_s)
        if baseline_s is not None:
            ratio = seconds / baseline_s
            row.update(
                baseline_s=baseline_s,
                ratio=ratio,
                target_ratio=TARGET_RATIO,
                meets_target=ratio <= TARGET_RATIO,
            )
        rows.append(row)
        print(json.dumps(row), flush=True)

    prediction, y = _regression_prediction(rng, N)
    split = ku.conformal.SplitConformalRegressor(0.1)
    normalized = ku.conformal.NormalizedConformalRegressor(0.1)
    seconds = timed_rounds(
        repeats,
        fit_split=lambda: split.fit(prediction, y),
        fit_normalized=lambda: normalized.fit(prediction, y),
    )
    for case, value in seconds.items():
        record(case, N, value, TARGETS_S["fit"])

    probs, labels = _probs(rng, N)
    new_probs, _ = _probs(rng, N)
    aps = ku.conformal.ConformalClassifier(0.1, score="aps")
    raps = ku.conformal.ConformalClassifier(0.1, score="raps")
    aps.fit(probs, labels)
    raps.fit(probs, labels)
    seconds = timed_rounds(
        repeats,
        fit_aps=lambda: aps.fit(probs, labels),
        fit_raps=lambda: raps.fit(probs, labels),
        predict_aps=lambda: aps.predict_set(new_probs),
        predict_raps=lambda: raps.predict_set(new_probs),
    )
    for case, value in seconds.items():
        record(f"{case} ({N} x {C})", N, value, TARGETS_S["sets"])

    n, t = 1000, 100
    regressor = mlp(8, 2, hidden_units=(50,), dropout_rate=0.1)
    regressor.compile("adam", loss=ku.losses.gaussian_nll)
    classifier = mlp(
        8, C, hidden_units=(50,), dropout_rate=0.1, output_activation="softmax"
    )
    x = rng.normal(size=(n, 8)).astype("float32")
    cal = ku.predict_regression(regressor, x, t, verbose=0)
    normalized.fit(cal, cal.mean + cal.std * rng.normal(size=cal.mean.shape))
    cal_probs = ku.predict_classification(classifier, x, t, verbose=0)
    raps.fit(cal_probs, rng.integers(0, C, size=n))
    inputs = tf.constant(x)
    with tempfile.TemporaryDirectory() as folder:
        for name, model, task, fitted in (
            (
                "regression, NormalizedConformalRegressor",
                regressor,
                "regression",
                normalized,
            ),
            ("classification, RAPS", classifier, "classification", raps),
        ):
            plain = tf.saved_model.load(
                ku.export(model, os.path.join(folder, f"{task}-plain"), task, t)
            )
            with_conformal = tf.saved_model.load(
                ku.export(
                    model,
                    os.path.join(folder, f"{task}-conformal"),
                    task,
                    t,
                    conformal=fitted,
                )
            )
            # Calls of ~50 ms on a shared machine: more rounds for a ratio.
            seconds = timed_rounds(
                max(repeats, 41),
                baseline=lambda s=plain: {
                    k: v.numpy() for k, v in s.serve(inputs).items()
                },
                variant=lambda s=with_conformal: {
                    k: v.numpy() for k, v in s.serve(inputs).items()
                },
            )
            record(
                f"exported_signature ({name}, T={t})",
                n,
                seconds["variant"],
                baseline_s=seconds["baseline"],
            )
            # The conformal part alone, on the served summary: what the
            # ratio above adds, without the noise of two forward passes.
            summary = {k: tf.constant(v) for k, v in plain.serve(inputs).items()}
            alone = tf.function(
                lambda fields, m=fitted: serving_outputs(m, fields),
                autograph=False,
            )
            seconds = timed_rounds(
                repeats,
                part=lambda a=alone, f=summary: {k: v.numpy() for k, v in a(f).items()},
            )
            record(f"in-graph conformal part alone ({name})", n, seconds["part"])
    return rows


def markdown(rows):
    lines = [
        "| case | N | time | target | met |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        if "ratio" not in row and "target_s" not in row:
            lines.append(
                f"| {row['case']} | {row['N']} | {row['seconds'] * 1000:.2f} ms "
                "| (informative) | |"
            )
            continue
        if "ratio" in row:
            target = f"<= {row['target_ratio']}x of {row['baseline_s'] * 1000:.1f} ms"
            time = f"{row['seconds'] * 1000:.1f} ms ({row['ratio']:.2f}x)"
        else:
            target = f"< {row['target_s'] * 1000:.0f} ms"
            time = f"{row['seconds'] * 1000:.1f} ms"
        met = "yes" if row["meets_target"] else "no"
        lines.append(f"| {row['case']} | {row['N']} | {time} | {target} | {met} |")
    return "\n".join(lines)


def main():
    benchmark_main(__doc__, "conformal", run, markdown)


if __name__ == "__main__":
    main()
