"""Packed LeNet-5 ensembles and BatchEnsemble on both CPU kernel sets.

Run: python benchmarks/kernel_sets.py [--repeats 3] [--output FILE] [--fresh]

TensorFlow runs its CPU kernels from oneDNN (on by itself on CPUs with
AVX-512 VNNI / AMX, or with `TF_ENABLE_ONEDNN_OPTS=1`) or its own (Eigen:
`TF_ENABLE_ONEDNN_OPTS=0`, most other x86 CPUs, ARM). The grouped
convolutions of packed ensembles run as one grouped convolution on the
first and split into per-member convolutions on the second (see
`keras_uncertainty/layers/grouped_conv.py`). The setting is read when
TensorFlow loads, so this script runs one worker process per kernel set, one
after the other, each measuring, as `ensemble_training.py` and
`batch_ensemble.py` do:

- LeNet-5, 5 members: one member's plain `fit`, the packed `ku.Ensemble` fit
  and the 5 members one after another (512 MNIST digits, batch 64, 2 epochs;
  targets: the ensemble <= 2x one member, sequential >= 2.5x the ensemble);
- a 4-member BatchEnsemble LeNet-5 epoch against a packed 4-member ensemble
  epoch (1,024 rows, batch 64; target <= 1.2x).

Each kernel set's results are written (atomically) as soon as its worker
finishes; a second run keeps the kernel sets already measured with the same
TensorFlow and repeats (`--fresh` measures them again).
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
KERNEL_SETS = {"onednn": "1", "eigen": "0"}
LABELS = {
    "onednn": "oneDNN (`TF_ENABLE_ONEDNN_OPTS=1`)",
    "eigen": "TensorFlow's own kernels (`=0`)",
}


def worker(repeats, mnist_dir):
    sys.path.insert(0, HERE)
    import batch_ensemble
    import ensemble_training
    import tensorflow as tf

    import keras_uncertainty as ku

    lenet = ensemble_training.run_lenet(repeats, mnist_dir)
    be = batch_ensemble.run(repeats, mnist_dir)
    return {
        "tensorflow": tf.__version__,
        "repeats": repeats,
        "grouped_convolutions": ku.layers.grouped_convolution_formulation("CPU"),
        "lenet5_training": lenet,
        "batch_ensemble": be["training"],
    }


def markdown(results):
    rows = [
        "| measurement | " + " | ".join(LABELS[k] for k in results) + " | target |",
        "|---|" + "---|" * len(results) + "---|",
    ]

    def row(label, fn, target=""):
        cells = [fn(r) for r in results.values()]
        rows.append(f"| {label} | " + " | ".join(cells) + f" | {target} |")

    row("grouped convolutions run as", lambda r: r["grouped_convolutions"])
    row(
        "LeNet-5, one member, plain `fit` (2 epochs)",
        lambda r: f"{r['lenet5_training']['one_member']:.2f} s",
    )
    row(
        "LeNet-5 `ku.Ensemble`, 5 members packed, one `fit` / one member",
        lambda r: (
            f"{r['lenet5_training']['ensemble']:.2f} s "
            f"({r['lenet5_training']['ensemble_over_one']:.2f}x)"
        ),
        "<= 2x",
    )
    row(
        "5 members one after another / the packed ensemble",
        lambda r: (
            f"{r['lenet5_training']['sequential']:.2f} s "
            f"({r['lenet5_training']['sequential_over_ensemble']:.2f}x)"
        ),
        ">= 2.5x",
    )
    row(
        "one training step, packed ensemble / one member (after tracing)",
        lambda r: (
            f"{r['lenet5_training']['step_ensemble'] * 1e3:.1f} / "
            f"{r['lenet5_training']['step_one_member'] * 1e3:.1f} ms "
            f"({r['lenet5_training']['step_ensemble_over_one']:.2f}x)"
        ),
    )
    row(
        "BatchEnsemble epoch / packed ensemble epoch (4 members)",
        lambda r: (
            f"{r['batch_ensemble']['batch_ensemble_epoch']:.3f} / "
            f"{r['batch_ensemble']['packed_ensemble_epoch']:.3f} s "
            f"({r['batch_ensemble']['epoch_batch_ensemble_over_packed']:.2f}x)"
        ),
        "<= 1.2x",
    )
    return "\n".join(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--output", default=os.path.join(HERE, "results", "kernel_sets.json")
    )
    default_dir = os.path.join(
        os.environ.get("KERAS_UNCERTAINTY_DATA", os.path.join("..", "shared", "data")),
        "mnist",
    )
    parser.add_argument("--mnist-dir", default=default_dir)
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be a positive integer, not {args.repeats}")
    if args.worker:
        print("RESULT " + json.dumps(worker(args.repeats, args.mnist_dir)))
        return

    sys.path.insert(0, HERE)
    from _timing import write_report

    report = {}
    if os.path.exists(args.output) and not args.fresh:
        with open(args.output) as file:
            report = json.load(file).get("kernel_sets", {})
    for name, flag in KERNEL_SETS.items():
        done = report.get(name)
        if done and done.get("repeats") == args.repeats:
            print(f"{name}: kept from {args.output}", flush=True)
            continue
        env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": flag, "TF_CPP_MIN_LOG_LEVEL": "2"}
        command = [sys.executable, __file__, "--worker", "--repeats", str(args.repeats)]
        command += ["--mnist-dir", args.mnist_dir]
        run = subprocess.run(command, env=env, capture_output=True, text=True)
        lines = [x for x in run.stdout.splitlines() if x.startswith("RESULT ")]
        if run.returncode != 0 or not lines:
            sys.exit(f"{name} worker failed: {run.stderr.strip()[-2000:]}")
        report[name] = json.loads(lines[-1][len("RESULT ") :])
        write_report(args.output, args.repeats, kernel_sets=report)
        print(f"{name}: {json.dumps(report[name])}", flush=True)
    print(markdown(report))


if __name__ == "__main__":
    main()
