"""`keras-uncertainty uci`: the UCI regression benchmark against published numbers."""

import math
import sys

import keras

from keras_uncertainty.cli.results import (
    WRITE_FAILED,
    data_identity,
    interrupt_status,
)
from keras_uncertainty.cli.usage import parse_splits
from keras_uncertainty.experiments.protocols import METHODS


class _Progress(keras.callbacks.Callback):
    """One status line on stderr: data set, method, which training and how far.

    MC dropout trains twice (the grid on the validation rows, then the
    chosen configurations); every split trains at once.
    """

    def __init__(self, label):
        super().__init__()
        self.label = label
        self.fits = 0

    def show(self, text, final=False):
        if sys.stderr.isatty():
            sys.stderr.write(f"\r{self.label} {text}".ljust(79)[:79])
        elif final:  # a log file or notebook gets one line per result
            sys.stderr.write(f"{self.label} {text}")
        sys.stderr.flush()

    def on_train_begin(self, logs=None):
        self.fits += 1

    def on_train_batch_end(self, batch, logs=None):
        steps = self.params.get("steps") or 0
        if steps and batch % max(1, steps // 50) == 0:
            self.show(f"training {self.fits}: {100 * (batch + 1) // steps:3d}%")


def _cell(value, spread):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.2f} ± {spread:.2f}"


def table(results):
    from keras_uncertainty.experiments.uci import PUBLISHED

    header = (
        f"{'data set':<27} {'method':<18} {'splits':>6} {'RMSE':>14} {'NLL':>14} "
        f"{'MC dropout RMSE':>16} {'NLL':>13} {'Deep Ens. RMSE':>15} {'NLL':>13} "
        f"{'seconds':>8}"
    )
    lines = [header]
    for r in results:
        published = PUBLISHED.get(r.dataset, {})
        mc = published.get("mc-dropout")
        de = published.get("ensemble")
        lines.append(
            f"{r.dataset:<27} {r.method:<18} {r.num_splits:>6} "
            f"{_cell(r.rmse_mean, r.rmse_se):>14} {_cell(r.nll_mean, r.nll_se):>14} "
            f"{_cell(*mc[:2]) if mc else '':>16} {_cell(*mc[2:]) if mc else '':>13} "
            f"{_cell(*de[:2]) if de else '':>15} {_cell(*de[2:]) if de else '':>13} "
            f"{r.seconds:8.1f}"
        )
    return "\n".join(lines)


def run_uci(args, results_file, error):
    """Runs the command.

    Every finished (data set, method) unit is added to `results_file` at once, so
    a kill loses at most the unit in progress, and `--resume` continues from
    the file.

    Args:
        args: The parsed `uci` arguments, after
            `keras_uncertainty.cli.main.resolve_protocol`.
        results_file: The `keras_uncertainty.cli.results.ResultsFile` of
            `--output` (with its path None when there is none); units it
            already holds are skipped.
        error: `error(message)` prints one line and exits with status 2.

    Returns:
        The exit status: 0, 1 when a data set and method diverged on every
        split, 4 when the results file could not be written at the end (the
        table is printed), 130 when interrupted (143 on SIGTERM, 129 on
        SIGHUP). The file's lock is released in every case.
    """
    try:
        return _run_uci(args, results_file, error)
    finally:
        results_file.release()


def _run_uci(args, results_file, error):
    import dataclasses

    from keras_uncertainty.datasets import load_uci
    from keras_uncertainty.experiments import uci

    datasets = args.datasets or ["yacht"]
    methods = METHODS if args.method == "all" else (args.method,)
    try:
        splits = parse_splits(args.splits) if args.splits else None
        plans = []
        for name in datasets:
            first = load_uci(name, 0, args.data_dir)
            chosen = splits if splits is not None else list(range(first.num_splits))
            if chosen[-1] >= first.num_splits:
                raise ValueError(
                    f"split {chosen[-1]} is out of range for {first.name}: it has "
                    f"splits 0-{first.num_splits - 1}"
                )
            # Every split is read (and checked) before any training starts.
            loaded = [load_uci(name, k, args.data_dir) for k in chosen]
            plans.append((first.name, loaded))
            if results_file.path:  # resumed units must come from the same data
                results_file.check_data(first.name, data_identity(first.folder))
    except ValueError as exc:
        error(str(exc))

    failed, interrupted = [], None
    try:
        for label, splits in plans:
            for method in methods:
                if results_file.finished(label, method):
                    sys.stderr.write(
                        f"{label} {method}: in {results_file.path}, skipped\n"
                    )
                    continue
                progress = _Progress(f"{label} {method}, {len(splits)} splits:")
                try:
                    result = uci.run(
                        label,
                        method,
                        splits,
                        args.epochs_multiplier,
                        args.num_samples,
                        args.seed,
                        adversarial=args.adversarial_epsilon,
                        callbacks=[progress],
                        learning_rate=args.learning_rate,
                    )
                except FloatingPointError as exc:  # diverged on every split
                    failed.append(f"{label} {method}")
                    results_file.fail(label, method, str(exc))
                    progress.show(f"failed: {exc}", final=True)
                    sys.stderr.write("\n")
                    continue
                results_file.add(dataclasses.asdict(result))
                progress.show(f"done in {result.seconds:.0f} s", final=True)
                sys.stderr.write("\n")
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM or SIGHUP
        interrupted = interrupt_status(exc)
        sys.stderr.write(
            f"\n{interrupted[1]}: the finished data sets and methods follow\n"
        )
    if interrupted:
        status = "interrupted"
    elif failed:
        status = f"failed: {', '.join(failed)} diverged on every split"
    else:
        status = "complete"
    print(table([uci.Result(**record) for record in results_file.results]))
    if results_file.path and not results_file.close(status):
        if results_file.write_error is not None:
            why = results_file.write_error.strerror or str(results_file.write_error)
            sys.stderr.write(
                f"cannot write {results_file.path}: {why}; the "
                f"{len(results_file.results)} finished units are in the table "
                "above (an earlier file there is intact)\n"
            )
            return WRITE_FAILED
        sys.stderr.write(
            f"no data set and method finished; the earlier {results_file.path} was "
            "left as it was\n"
        )
    if interrupted:
        return interrupted[0]
    return 1 if failed else 0
