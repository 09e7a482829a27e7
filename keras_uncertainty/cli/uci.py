"""`keras-uncertainty uci`: the UCI regression benchmark against published numbers."""

import dataclasses
import math
import sys
import time

import keras

from keras_uncertainty.cli.durable import (
    check_stop,
    interrupt_status,
    stop_requested,
)
from keras_uncertainty.cli.progress import format_duration
from keras_uncertainty.cli.results import WRITE_FAILED, data_identity
from keras_uncertainty.cli.stopping import StopCheck
from keras_uncertainty.cli.usage import parse_splits
from keras_uncertainty.datasets import load_uci
from keras_uncertainty.experiments import registry, uci, uci_methods
from keras_uncertainty.experiments.protocols import PUBLISHED

# `--method all`: every method of the registry that runs under the protocol.
METHODS = registry.names(registry.UCI)


class _Progress(keras.callbacks.Callback):
    """Progress on stderr: a line as each (data set, method) unit starts and
    ends, with the run's elapsed time and its estimated remaining time, and
    on a terminal a status line of the training in progress.

    The estimate divides the time of the units finished in this run by
    their work (splits x training rows x epochs) and multiplies the work
    left by it: rough for the first units (the methods differ in cost), a
    guide for a long run.
    """

    def __init__(self, units):
        super().__init__()
        self.units = units  # [(label, method, work)]
        self.start = time.perf_counter()
        self.done_work = self.done_seconds = 0.0
        self.index = -1
        self.label = ""
        self.fits = 0

    def write(self, text):
        sys.stderr.write(text)
        sys.stderr.flush()

    def begin(self, index, num_splits):
        self.index, self.fits = index, 0
        self.unit_start = time.perf_counter()
        label, method, _ = self.units[index]
        self.label = f"{label} {method}"
        self.write(
            f"[{index + 1}/{len(self.units)}] {self.label}: {num_splits} splits; "
            f"elapsed {format_duration(time.perf_counter() - self.start)}"
            f"{self._remaining(index)}\n"
        )

    def _remaining(self, index):
        if not self.done_work:
            return ""
        left = sum(work for _, _, work in self.units[index:])
        estimate = self.done_seconds / self.done_work * left
        return f", about {format_duration(estimate)} left"

    def end(self, text, counted=True):
        seconds = time.perf_counter() - self.unit_start
        if counted:
            self.done_work += self.units[self.index][2]
            self.done_seconds += seconds
        if sys.stderr.isatty():
            self.write("\r" + " " * 79 + "\r")
        self.write(f"{self.label}: {text} in {format_duration(seconds)}\n")

    def on_train_begin(self, logs=None):
        self.fits += 1

    def on_train_batch_end(self, batch, logs=None):
        steps = self.params.get("steps") or 0
        if sys.stderr.isatty() and steps and batch % max(1, steps // 50) == 0:
            percent = 100 * (batch + 1) // steps
            text = f"{self.label} training {self.fits}: {percent:3d}%"
            self.write("\r" + text.ljust(79)[:79])


def _cell(value, spread):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    # No standard error from one split: `n/a`, not a spread of 0.
    return f"{value:.2f} ± {'n/a' if spread is None else f'{spread:.2f}'}"


def table(results):
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

    protocol = uci_methods.Protocol(
        epochs_multiplier=args.epochs_multiplier,
        learning_rate=args.learning_rate,
        schedule=args.schedule,
        num_samples=args.num_samples,
        seed=args.seed,
        adversarial=args.adversarial_epsilon,
        variance_objective=args.variance_objective,
    )
    units = [
        (
            label,
            method,
            # A unit the results file already has is skipped: no work left.
            0
            if results_file.finished(label, method)
            else len(splits) * len(splits[0].y_train) * splits[0].n_epochs,
        )
        for label, splits in plans
        for method in methods
    ]
    progress = _Progress(units)
    # A signal sets a flag (see `durable.handle_signals`), checked by
    # `StopCheck` between batches and epochs and here between units.
    protocol = dataclasses.replace(protocol, callbacks=(progress, StopCheck()))
    failed, interrupted = [], None
    try:
        for index, (label, method, _) in enumerate(units):
            check_stop()
            splits = dict(plans)[label]
            if results_file.finished(label, method):
                sys.stderr.write(f"{label} {method}: in {results_file.path}, skipped\n")
                continue
            progress.begin(index, len(splits))
            try:
                result = uci_methods.run(label, method, splits, protocol)
            except FloatingPointError as exc:  # diverged on every split
                failed.append(f"{label} {method}")
                results_file.fail(label, method, str(exc))
                progress.end(f"failed: {exc}", counted=False)
                continue
            results_file.add(dataclasses.asdict(result))
            progress.end(
                f"RMSE {result.rmse_mean:.3g}, NLL {result.nll_mean:.3g}, done"
            )
        check_stop()  # a signal during the last unit's evaluation
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM or SIGHUP
        interrupted = interrupt_status(exc)
        sys.stderr.write(
            f"\n{interrupted[1]}: the finished data sets and methods follow\n"
        )
    if interrupted is None and stop_requested() is not None:
        # A signal after the last check: the end is decided here, before
        # the final status is written (a later one changes nothing).
        interrupted = interrupt_status(stop_requested())
        sys.stderr.write(f"\n{interrupted[1]}\n")
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
