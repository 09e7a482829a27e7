"""The README's method tables and cost figure, from the commands' result files.

Run: python benchmarks/method_table.py [--mnist FILE] [--uci FILE]

Reads the `results.json` of `keras-uncertainty mnist --output-dir` and the
`--output` file of `keras-uncertainty uci`, prints the MNIST table and the UCI
table (every method, every data set that finished, beside the published
rows) as Markdown, and draws NLL against prediction cost per method
(`docs/figures/method_cost.png`: MNIST NLL against milliseconds per image,
log scale, one point per method). Nothing is measured here: every figure is
read from the files, which the commands wrote from one run of the final code.
"""

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MNIST = os.path.join(HERE, "results", "mnist_all_methods.json")
UCI = os.path.join(HERE, "results", "uci_all_methods.json")
FIGURE = os.path.join(HERE, "..", "docs", "figures", "method_cost.png")


def mnist_table(records):
    from keras_uncertainty.experiments.mnist_methods import METHODS

    rows = [
        "| method | acc % | NLL | ECE | Brier | error AUROC | OOD AUROC rot. 60 | "
        "OOD AUROC noise | set size (coverage) at 95% | train s | ms / image |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        rows.append(
            f"| {METHODS[r['method']].label} | {100 * r['accuracy']:.2f} | "
            f"{r['nll']:.3f} | {r['ece']:.3f} | {r['brier']:.3f} | "
            f"{r['error_auroc']:.3f} | {r['ood_auroc_rotation']:.3f} | "
            f"{r['ood_auroc_noise']:.3f} | {r['set_size']:.2f} ({r['coverage']:.3f}) | "
            f"{r['train_seconds']:.0f} | {r['predict_ms']:.3f} |"
        )
    return "\n".join(rows)


def _number(value):
    """Two decimals, or two significant digits below 0.01 (naval's RMSE is
    0.0002 to 0.009, all "0.00" at two decimals)."""
    if value != 0 and abs(value) < 0.01:
        return f"{value:.2g}"
    return f"{value:.2f}"


def _by_dataset(records):
    """The records grouped by data set (in the order each first appears),
    each data set's methods in the command line's order (a resumed run
    appends the units it ran again at the end of the file)."""
    from keras_uncertainty.experiments.protocols import METHODS

    datasets = list(dict.fromkeys(r["dataset"] for r in records))
    return sorted(
        records,
        key=lambda r: (datasets.index(r["dataset"]), METHODS.index(r["method"])),
    )


def uci_table(records):
    from keras_uncertainty.experiments.protocols import PUBLISHED

    def cell(mean, spread):
        # A standard error of one split is null: `n/a`, not a spread of 0.
        return f"{_number(mean)} ± {'n/a' if spread is None else _number(spread)}"

    rows = [
        "| data set | method | splits | RMSE | NLL | seconds |",
        "|---|---|---|---|---|---|",
    ]
    shown = set()
    for r in _by_dataset(records):
        dataset = r["dataset"]
        if dataset not in shown:
            shown.add(dataset)
            for name, values in PUBLISHED.get(dataset, {}).items():
                rows.append(
                    f"| {dataset} | published {name} |  | {cell(*values[:2])} | "
                    f"{cell(*values[2:])} |  |"
                )
        rows.append(
            f"| {dataset} | {r['method']} | {r['num_splits']} | "
            f"{cell(r['rmse_mean'], r['rmse_se'])} | "
            f"{cell(r['nll_mean'], r['nll_se'])} | {r['seconds']:.0f} |"
        )
    return "\n".join(rows)


TARGET_ROWS = ("mc-dropout", "ensemble")


def uci_summary(records):
    """Methods by data sets: each cell NLL / RMSE, the data set's best NLL in
    bold; beneath, the targets: the lower published NLL and the lower
    published RMSE (with its standard error) of MC dropout and Deep
    Ensembles. Also returns the run's total hours."""
    from keras_uncertainty.experiments.protocols import METHODS, PUBLISHED

    datasets = list(dict.fromkeys(r["dataset"] for r in records))
    found = {(r["dataset"], r["method"]): r for r in records}
    best = {
        d: min((r for r in records if r["dataset"] == d), key=lambda r: r["nll_mean"])[
            "method"
        ]
        for d in datasets
    }
    rows = [
        "| method | " + " | ".join(datasets) + " |",
        "|---" * (len(datasets) + 1) + "|",
    ]
    for method in METHODS:
        cells = []
        for d in datasets:
            r = found.get((d, method))
            if r is None:
                cells.append("")
                continue
            text = f"{_number(r['nll_mean'])} / {_number(r['rmse_mean'])}"
            cells.append(f"**{text}**" if best[d] == method else text)
        rows.append(f"| {method} | " + " | ".join(cells) + " |")
    # The targets' references: the better of the MC dropout and Deep
    # Ensembles rows (the papers the benchmark reproduces).
    targets = {
        d: {k: v for k, v in PUBLISHED.get(d, {}).items() if k in TARGET_ROWS}
        for d in datasets
    }
    lowest_nll, lowest_rmse = [], []
    for d in datasets:
        if not targets[d]:
            lowest_nll.append("")
            lowest_rmse.append("")
            continue
        name, v = min(targets[d].items(), key=lambda item: item[1][2])
        lowest_nll.append(f"{v[2]:.2f} ({name})")
        name, v = min(targets[d].items(), key=lambda item: item[1][0])
        lowest_rmse.append(f"{v[0]:.2f} ± {v[1]:.2f} ({name})")
    rows.append("| target NLL (published) | " + " | ".join(lowest_nll) + " |")
    rows.append("| target RMSE (published) | " + " | ".join(lowest_rmse) + " |")
    hours = sum(r["seconds"] for r in records) / 3600
    return "\n".join(rows), hours


def cost_figure(records, path):
    from keras_uncertainty.experiments.mnist_methods import METHODS

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for k, r in enumerate(sorted(records, key=lambda r: r["nll"])):
        ax.scatter(r["predict_ms"], r["nll"], s=30)
        ax.annotate(
            METHODS[r["method"]].label,
            (r["predict_ms"], r["nll"]),
            textcoords="offset points",
            # Alternate above and below so that close points stay readable.
            xytext=(5, 4 if k % 2 else -11),
            fontsize=8,
        )
    ax.set_xscale("log")
    ax.set_xlabel("prediction time per image (ms, log scale; 2 CPU cores)")
    ax.set_ylabel("test NLL (nats)")
    ax.set_title("MNIST (test-only protocol): NLL against prediction cost")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mnist", default=MNIST)
    parser.add_argument("--uci", default=UCI)
    parser.add_argument("--figure", default=FIGURE)
    args = parser.parse_args()
    with open(args.mnist) as f:
        mnist = json.load(f)["results"]
    print(mnist_table(mnist))
    cost_figure(mnist, args.figure)
    print(f"\nwrote {args.figure}\n")
    if os.path.exists(args.uci):
        with open(args.uci) as f:
            uci = json.load(f)["results"]
        print(uci_table(uci))
        summary, hours = uci_summary(uci)
        print(f"\n{summary}\n\n{len(uci)} units, {hours:.2f} hours")


if __name__ == "__main__":
    main()
