"""Images 61 and 591 under MC dropout, over several training seeds.

Run: python scripts/mnist_seeds.py [--seeds 0-4] [--output FILE] [--figure PNG]

The offline protocol of `keras-uncertainty mnist` (LeNet-5, channel dropout
0.5, trained on test images 2000-9999, evaluated on 0-1999), MC dropout only,
once per seed. For each seed it records the accuracy on images 0-1999 and, for
the article's typical eight (61) and ambiguous eight (591), the votes of the
100 samples, the predictive entropy and the mutual information. Each seed is
written to the JSON file as soon as it finishes (atomically), and a rerun
skips the seeds already there, so a stopped run resumes. The figure shows
the two images beside their vote histograms for the first seed (drawn
when that seed runs).
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402

import numpy as np  # noqa: E402

import keras_uncertainty as ku  # noqa: E402
from keras_uncertainty.cli.results import write_json_atomic  # noqa: E402
from keras_uncertainty.experiments import mnist  # noqa: E402


def seeds_of(text):
    low, _, high = text.partition("-")
    return list(range(int(low), int(high or low) + 1))


def run_seed(data, seed):
    report = mnist.run(data, methods=("mc-dropout",), seed=seed)
    prediction = report.predictions["mc-dropout", 0]
    row = {"seed": seed, "accuracy": report.scores["mc-dropout", 0].accuracy}
    for index in mnist.EXAMPLES:
        row[str(index)] = {
            "votes": prediction.votes[index].tolist(),
            "entropy": float(prediction.entropy[index]),
            "mutual_information": float(prediction.mutual_information[index]),
        }
    return row, prediction


def votes_text(votes):
    order = np.argsort(-np.asarray(votes), kind="stable")
    return ", ".join(f"{c}: {votes[c]}" for c in order if votes[c])


def markdown(rows):
    lines = [
        "| seed | accuracy 0-1999 | image 61 votes | 61 entropy / MI | image 591 votes "
        "| 591 entropy / MI | 591 more uncertain (entropy, MI) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        a, b = row["61"], row["591"]
        more = (
            f"{'yes' if b['entropy'] > a['entropy'] else 'no'}, "
            f"{'yes' if b['mutual_information'] > a['mutual_information'] else 'no'}"
        )
        lines.append(
            f"| {row['seed']} | {100 * row['accuracy']:.2f}% "
            f"| {votes_text(a['votes'])} "
            f"| {a['entropy']:.3f} / {a['mutual_information']:.3f} "
            f"| {votes_text(b['votes'])} "
            f"| {b['entropy']:.3f} / {b['mutual_information']:.3f} | {more} |"
        )
    return "\n".join(lines)


def figure(data, prediction, seed, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(8, 6), gridspec_kw={"width_ratios": [1, 2]})
    for row, index in enumerate(mnist.EXAMPLES):
        axes[row, 0].imshow(data.images[index], cmap="gray_r")
        axes[row, 0].set_title(f"test image {index} (label {data.labels[index]})")
        axes[row, 0].axis("off")
        ku.plots.vote_histogram(prediction, index, ax=axes[row, 1])
        axes[row, 1].set_title(f"MC dropout, seed {seed}: " + axes[row, 1].get_title())
        axes[row, 1].title.set_fontsize(9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument(
        "--output", default=os.path.join("benchmarks", "results", "mnist_seeds.json")
    )
    parser.add_argument(
        "--figure", default=os.path.join("docs", "figures", "mnist_61_591.png")
    )
    args = parser.parse_args()
    data = ku.datasets.load_mnist(split="test")
    rows = []
    if os.path.exists(args.output):
        with open(args.output) as f:
            rows = json.load(f)["rows"]
    done = {row["seed"] for row in rows}
    seeds = seeds_of(args.seeds)
    for seed in seeds:
        if seed in done:
            continue
        row, prediction = run_seed(data, seed)
        if seed == seeds[0] and args.figure:  # drawn when the first seed runs
            figure(data, prediction, seed, args.figure)
        rows = [r for r in rows if r["seed"] != seed] + [row]
        rows.sort(key=lambda r: r["seed"])
        write_json_atomic(args.output, {"protocol": "test-only", "rows": rows})
        print(json.dumps(row), flush=True)
    print(markdown(rows))


if __name__ == "__main__":
    main()
