"""Speed of the OOD scorers: Mahalanobis and feature-density fits, scoring, metrics.

Run: python benchmarks/ood.py [--repeats 15] [--output FILE]

Every figure is the median wall time of `--repeats` runs after one warm-up,
the cases of a block timed in rounds, in shuffled order (see `_timing.py`).
Features are float32 standard normal with a class-dependent shift, as a
penultimate layer would give them (the fits convert them to float64).
Cases:

- mahalanobis_fit: `ku.ood.Mahalanobis().fit` on 60,000 x 128 features with
  10 classes (issue 22's target: under 2 s on a 2-core CPU);
- feature_density_fit: `ku.ood.FeatureDensity().fit` on the same features
  (one covariance per class);
- mahalanobis_transform / feature_density_transform: scoring 10,000 new
  rows with the fitted scorers;
- ood_report: `ku.metrics.ood_report` on 100,000 in-distribution and
  100,000 OOD scores (AUROC, AUPR-in, AUPR-out, FPR95);
- mahalanobis_fit_1_blas_thread: the first case with numpy's BLAS limited
  to one thread (with `threadpoolctl`, which scikit-learn installs; skipped
  without it). On a machine that other processes keep busy, OpenBLAS's
  threads wait on each other and the default case's median can be several
  times its minimum; this row shows the fit's own cost.
"""

import json
import os

import numpy as np
from _timing import benchmark_main, timed_rounds

import keras_uncertainty as ku

NUM_ROWS, DIM, NUM_CLASSES = 60_000, 128, 10
TARGET_FIT_S = 2.0


def run(repeats):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, NUM_CLASSES, NUM_ROWS)
    means = 2.0 * rng.normal(size=(NUM_CLASSES, DIM))
    features = (means[labels] + rng.normal(size=(NUM_ROWS, DIM))).astype("float32")
    test = rng.normal(size=(10_000, DIM)).astype("float32")
    mahalanobis = ku.ood.Mahalanobis().fit(features, labels)
    density = ku.ood.FeatureDensity().fit(features, labels)
    in_scores = rng.normal(size=100_000)
    out_scores = rng.normal(loc=1.0, size=100_000)

    rows = []
    fits = timed_rounds(
        repeats,
        mahalanobis_fit=lambda: ku.ood.Mahalanobis().fit(features, labels),
        feature_density_fit=lambda: ku.ood.FeatureDensity().fit(features, labels),
    )
    scoring = timed_rounds(
        repeats,
        mahalanobis_transform=lambda: mahalanobis.transform(test),
        feature_density_transform=lambda: density.transform(test),
        ood_report=lambda: ku.metrics.ood_report(in_scores, out_scores),
    )
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        print("threadpoolctl is not installed: the 1-BLAS-thread case is skipped")
    else:
        with threadpool_limits(limits=1, user_api="blas"):
            fits.update(
                timed_rounds(
                    repeats,
                    mahalanobis_fit_1_blas_thread=lambda: ku.ood.Mahalanobis().fit(
                        features, labels
                    ),
                )
            )
    shapes = {
        "mahalanobis_fit_1_blas_thread": (NUM_ROWS, DIM, NUM_CLASSES),
        "mahalanobis_fit": (NUM_ROWS, DIM, NUM_CLASSES),
        "feature_density_fit": (NUM_ROWS, DIM, NUM_CLASSES),
        "mahalanobis_transform": (len(test), DIM, NUM_CLASSES),
        "feature_density_transform": (len(test), DIM, NUM_CLASSES),
        "ood_report": (len(in_scores) + len(out_scores), 1, 2),
    }
    # How busy the machine was: other processes slow the timings down.
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    for case, seconds in {**fits, **scoring}.items():
        n, d, c = shapes[case]
        row = {"case": case, "N": n, "D": d, "C": c, "seconds": seconds}
        row["load_average_1min"] = load
        if case.startswith("mahalanobis_fit"):
            row["target_s"] = TARGET_FIT_S
            row["meets_target"] = seconds < TARGET_FIT_S
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def markdown(rows):
    lines = ["| case | N | D | C | median | target |", "|---|---|---|---|---|---|"]
    for row in rows:
        target = f"< {row['target_s']:.0f} s" if "target_s" in row else ""
        lines.append(
            f"| {row['case']} | {row['N']} | {row['D']} | {row['C']} "
            f"| {row['seconds'] * 1000:.1f} ms | {target} |"
        )
    return "\n".join(lines)


def main():
    benchmark_main(__doc__, "ood", run, markdown)


if __name__ == "__main__":
    main()
