"""`keras-uncertainty mnist`: the MNIST article, referral and rotation shift."""

import hashlib
import io
import json
import os
import re
import sys
import time

import keras
import matplotlib
import numpy as np

import keras_uncertainty as ku
from keras_uncertainty.cli.durable import (
    check_stop,
    interrupt_status,
    stop_requested,
    write_bytes_atomic,
)
from keras_uncertainty.cli.progress import format_duration
from keras_uncertainty.cli.results import WRITE_FAILED
from keras_uncertainty.cli.stopping import StopCheck
from keras_uncertainty.cli.usage import UsageError
from keras_uncertainty.datasets import DownloadError, load_mnist
from keras_uncertainty.experiments import mnist, registry

DATASET = "mnist"  # the results file's `dataset` of every unit
# The largest unit file `--resume` reads (one is about 2.6 MB with the
# article's 10,000 test images).
MAX_UNIT_BYTES = 64 << 20


class _UnitProgress:
    """A line on stderr as each unit starts (with the run's elapsed time and
    an estimate of the time left: the mean time of the units finished in
    this run, times the units left; rough, the methods differ in cost) and
    as it ends (its upright accuracy and NLL, and its time)."""

    def __init__(self):
        self.start = time.perf_counter()
        self.unit_seconds = []

    def started(self, method, index, count):
        elapsed = time.perf_counter() - self.start
        left = ""
        if self.unit_seconds:
            mean = sum(self.unit_seconds) / len(self.unit_seconds)
            left = f", about {format_duration(mean * (count - index))} left"
        sys.stderr.write(
            f"[{index + 1}/{count}] mnist {method}: elapsed {format_duration(elapsed)}"
            f"{left}\n"
        )
        sys.stderr.flush()

    def finished(self, method, upright, seconds):
        self.unit_seconds.append(seconds)
        if sys.stderr.isatty():
            sys.stderr.write("\r" + " " * 79 + "\r")
        sys.stderr.write(
            f"mnist {method}: accuracy {100 * upright.accuracy:.2f}%, NLL "
            f"{upright.nll:.3f}, done in {format_duration(seconds)}\n"
        )
        sys.stderr.flush()


class _Progress(keras.callbacks.Callback):
    """One status line on stderr: which network trains, which epoch."""

    def __init__(self):
        super().__init__()
        self.fits = 0

    def on_train_begin(self, logs=None):
        self.fits += 1

    def on_epoch_end(self, epoch, logs=None):
        if not sys.stderr.isatty():
            return  # a status line only makes sense on a terminal
        loss = (logs or {}).get("loss", float("nan"))
        epochs = self.params.get("epochs")
        text = f"\rtraining network {self.fits}: epoch {epoch + 1}/{epochs}"
        sys.stderr.write(f"{text}, loss {loss:.3f}".ljust(79))
        sys.stderr.flush()


def _label(method):
    return registry.METHODS[method].label


def _short(method):
    return method


def _methods(report):
    order = list(registry.methods(registry.MNIST, baseline=True))
    return sorted({m for m, _ in report.scores}, key=order.index)


def _voting(report, methods):
    """The methods among `methods` whose predictions count the votes of
    several samples (MC dropout, the ensembles, VI, SWAG, ...); the one-pass
    and closed-form predictives (Laplace, SNGP, evidential, the baseline's
    single vote) have no votes to show."""
    voting = []
    for method in methods:
        votes = report.predictions[method, 0].votes
        if votes is not None and np.asarray(votes).sum(axis=-1).max() > 1:
            voting.append(method)
    return voting


def benchmark_table(report, timings):
    """The benchmark table: one row per method, on the upright digits.

    `timings`: `{method: {"train_seconds": s, "predict_ms": ms}}` (a method
    without one, resumed from an older file, shows blanks)."""
    lines = [
        f"  {'method':<22}{'acc %':>7}{'NLL':>7}{'ECE':>7}{'Brier':>7}"
        f"{'err AUROC':>10}{'OOD rot':>8}{'noise':>7}{'set 95%':>8}{'cover':>7}"
        f"{'train s':>8}{'ms/img':>8}"
    ]
    for method in _methods(report):
        s, d = report.scores[method, 0], report.decisions[method]
        t = timings.get(method, {})
        train = t.get("train_seconds")
        predict = t.get("predict_ms")
        lines.append(
            f"  {_label(method):<22}{100 * s.accuracy:>7.2f}{s.nll:>7.3f}"
            f"{s.ece:>7.3f}{s.brier:>7.3f}{s.error_auroc:>10.3f}"
            f"{d.ood_auroc_rotation:>8.3f}{d.ood_auroc_noise:>7.3f}"
            f"{d.set_size:>8.2f}{d.coverage:>7.3f}"
            + (f"{train:>8.0f}" if train is not None else f"{'':>8}")
            + (f"{predict:>8.3f}" if predict is not None else f"{'':>8}")
        )
    return lines


def report_text(report, num_samples, timings=None):
    """The printed report: the benchmark table, votes, referral and shift
    tables (`timings`: see `benchmark_table`)."""
    methods = _methods(report)
    lines = [f"MNIST, {report.protocol}:"]
    lines.extend(benchmark_table(report, timings or {}))
    lines.append(
        f"  (OOD: AUROC of the entropy against digits rotated by "
        f"{mnist.OOD_ROTATION} degrees and against noise images; set 95%: mean "
        f"conformal (LAC) set size at alpha {mnist.CONFORMAL_ALPHA}, and its "
        "coverage)"
    )
    voting = _voting(report, methods)
    if voting:
        lines.append("")
        lines.append("Votes of the samples for the article's two eights:")
    for method in voting:
        for index in mnist.EXAMPLES:
            p = report.predictions[method, 0]
            votes = p.votes[index]
            shown = ", ".join(
                f"{c}: {votes[c]}" for c in (-votes).argsort(kind="stable") if votes[c]
            )
            lines.append(
                f"  {_label(method):<14} image {index:>3} (label "
                f"{report.labels[index]}): {shown}  (of {int(votes.sum())}; "
                f"MI {p.mutual_information[index]:.3f})"
            )
    for degrees in mnist.ROTATIONS:
        lines.append("")
        shift = "" if degrees == 0 else f", digits rotated by {degrees} degrees"
        lines.append(
            f"Referral by predictive entropy{shift}: accuracy (%) on the retained data"
        )
        fractions = report.scores[methods[0], degrees].retention.retained_fraction
        lines.append(
            f"  {'retained':<22}" + "".join(f"{100 * f:>7.0f}%" for f in fractions)
        )
        for method in methods:
            curve = report.scores[method, degrees].retention
            lines.append(
                f"  {_label(method):<22}"
                + "".join(f"{100 * a:>8.2f}" for a in curve.accuracy)
            )
        for method in methods:
            # Random referral keeps a method's overall accuracy at every
            # fraction.
            random = report.scores[method, degrees].retention.random_accuracy
            lines.append(
                f"  {'random, ' + _short(method):<22}"
                + "".join(f"{100 * a:>8.2f}" for a in random)
            )
    lines.append("")
    lines.append("Under rotation (Ovadia et al. 2019): accuracy / NLL / ECE")
    lines.append(f"  {'degrees':<22}" + "".join(f"{d:>24}" for d in mnist.ROTATIONS))
    for method in methods:
        cells = []
        for degrees in mnist.ROTATIONS:
            s = report.scores[method, degrees]
            cells.append(f"{100 * s.accuracy:.1f}% / {s.nll:.2f} / {s.ece:.3f}")
        lines.append(f"  {_label(method):<22}" + "".join(f"{c:>24}" for c in cells))
    lines.append("")
    lines.append(f"T = {num_samples} samples; {report.seconds:.0f} s.")
    return "\n".join(lines)


def write_figures(report, output_dir):
    """Vote histograms, retention curves and reliability diagrams as PNGs,
    each written atomically (the old file or the new one, never a part);
    returns the paths written.

    `votes.png` shows every method whose samples vote (see `_voting`); a
    run of methods without votes (`--method laplace`, `sngp`,
    `evidential`) has none to show and does not write it. The retention
    curves and reliability diagrams show every method.

    Raises:
        OSError: A figure could not be written (those before it were).
    """
    # pyplot picks its backend when first imported: only here, after "Agg"
    # is chosen (the command's one lazy import; a run that stops earlier
    # never loads it).
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = ku.plots
    os.makedirs(output_dir, exist_ok=True)
    methods = _methods(report)
    sampled = _voting(report, methods)
    paths = []

    def save(fig, name):
        path = os.path.join(output_dir, name)
        fig.tight_layout()
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=100)
        plt.close(fig)
        write_bytes_atomic(path, png.getvalue())
        paths.append(path)

    if sampled:
        fig, axes = plt.subplots(
            len(sampled),
            len(mnist.EXAMPLES),
            figsize=(10, 3.5 * len(sampled)),
            squeeze=False,
        )
        for row, method in enumerate(sampled):
            for col, index in enumerate(mnist.EXAMPLES):
                ax = plots.vote_histogram(
                    report.predictions[method, 0], index, ax=axes[row, col]
                )
                ax.set_title(f"{_label(method)}, image {index}: " + ax.get_title())
                ax.title.set_fontsize(8)
        save(fig, "votes.png")

    fig, axes = plt.subplots(
        1, len(mnist.ROTATIONS), figsize=(5.5 * len(mnist.ROTATIONS), 4.5)
    )
    for ax, degrees in zip(axes, mnist.ROTATIONS):
        plots.retention_curve(
            {_label(m): report.scores[m, degrees].retention for m in methods}, ax=ax
        )
        ax.set_title(f"Referral, rotation {degrees} degrees")
    save(fig, "retention.png")

    fig, axes = plt.subplots(
        1, len(methods), figsize=(5 * len(methods), 4.5), squeeze=False
    )
    for ax, method in zip(axes[0], methods):
        plots.reliability_diagram(
            report.labels,
            report.predictions[method, 0].probs,
            ax=ax,
            label=_label(method),
        )
        ax.set_title(f"{_label(method)}: " + ax.get_title())
    save(fig, "reliability.png")
    return paths


def data_identity(test, train):
    """SHA-256 of the MNIST arrays a run used (the test set, and the
    training set when the article's protocol runs): `--resume` refuses
    units computed from other data or under the other protocol."""
    digest = hashlib.sha256()
    for part in (test, train):
        if part is None:
            digest.update(b"no training set\0")
            continue
        for array in (part.images, part.labels):
            array = np.ascontiguousarray(array)
            digest.update(f"{array.dtype}{array.shape}".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


def _load_finished(results_file, output_dir):
    """The predictions of the units `results_file` holds (a `--resume`),
    read from their `.npz` files and checked against their SHA-256.

    Raises:
        UsageError: A file is missing, changed or unreadable.
    """
    finished = {}
    for record in results_file.results:
        path = os.path.join(output_dir, record["file"])
        where = f"--resume: the {record['method']} unit's {path!r}"
        if os.path.basename(record["file"]) != record["file"]:
            raise UsageError(f"{where} is not a file name in --output-dir")
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_UNIT_BYTES + 1)
        except OSError as exc:
            raise UsageError(
                f"{where} cannot be read: {exc.strerror}; run without --resume "
                "to start over"
            ) from None
        if hashlib.sha256(data).hexdigest() != record["sha256"]:
            raise UsageError(
                f"{where} has changed since it was written (its SHA-256 differs "
                "from results.json's); run without --resume to start over"
            )
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                finished[record["method"]] = mnist.predictions_from_arrays(dict(arrays))
        except ValueError as exc:
            raise UsageError(f"{where} is not valid: {exc}") from None
    return finished


class _UnitWriter:
    """Writes each finished unit as it finishes: its predictions to a
    `<method>-<sha256 prefix>.npz` file (a new name for new content, so an
    earlier run's file is never overwritten), then its record to the
    results file. A write that fails keeps the unit in memory (it is in the
    report) and is remembered for the exit status."""

    def __init__(self, results_file, output_dir, progress=None):
        self.results_file, self.output_dir = results_file, output_dir
        self.progress = progress
        self.error = None
        # The unit files of the results.json this run replaces (not when
        # resuming): removed once the new results.json no longer names them.
        self.replaced = set() if results_file.carried else _named_files(results_file)

    def __call__(self, method, predictions, scores, seconds, decisions, timing):
        if self.progress is not None:
            self.progress.finished(method, scores[0], seconds)
        buffer = io.BytesIO()
        np.savez(buffer, **mnist.prediction_arrays(predictions))
        data = buffer.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        name = f"{method}-{digest[:12]}.npz"
        try:
            write_bytes_atomic(os.path.join(self.output_dir, name), data)
        except OSError as exc:
            if self.error is None:
                sys.stderr.write(
                    f"\ncannot write {name} in {self.output_dir}: "
                    f"{exc.strerror or exc}; the unit is kept in memory for the "
                    "report\n"
                )
            self.error = exc
            return
        upright = scores[0]
        self.results_file.results = [
            r for r in self.results_file.results if r["method"] != method
        ]
        self.results_file.add(
            {
                "dataset": DATASET,
                "method": method,
                "file": name,
                "sha256": digest,
                "accuracy": upright.accuracy,
                "nll": upright.nll,
                "ece": upright.ece,
                "brier": upright.brier,
                "error_auroc": upright.error_auroc,
                "ood_auroc_rotation": decisions.ood_auroc_rotation,
                "ood_auroc_noise": decisions.ood_auroc_noise,
                "set_size": decisions.set_size,
                "coverage": decisions.coverage,
                **timing,
                "seconds": seconds,
            }
        )
        if self.results_file.write_error is None and self.results_file.on_disk:
            named = {r["file"] for r in self.results_file.results}
            for old in self.replaced - named:
                try:
                    os.remove(os.path.join(self.output_dir, old))
                except OSError:
                    pass
            self.replaced &= named


def _named_files(results_file):
    """The unit files an existing results file names (none if unreadable)."""
    try:
        if os.path.getsize(results_file.path) > MAX_UNIT_BYTES:
            return set()
        with open(results_file.path) as f:
            earlier = json.load(f)
        names = {r["file"] for r in earlier["results"]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    # Only files named as this command names them are ever removed.
    methods = "|".join(map(re.escape, registry.methods(registry.MNIST, baseline=True)))
    ours = re.compile(rf"({methods})-[0-9a-f]{{12}}\.npz")
    return {n for n in names if isinstance(n, str) and ours.fullmatch(n)}


def run_mnist(args, results_file, error):
    """Runs the command; `error(message)` exits with status 2.

    Every finished method (a unit) is written to `results_file` (in
    `--output-dir`) at once, with its predictions beside it, so a kill loses
    at most the unit in progress, and `--resume` continues from the file.

    Returns:
        The exit status: 0, 4 when a unit or a figure could not be written
        (the report is printed), 130 when interrupted (143 on SIGTERM, 129
        on SIGHUP). The file's lock is released in every case.
    """
    try:
        return _run_mnist(args, results_file, error)
    finally:
        results_file.release()


def _run_mnist(args, results_file, error):
    try:
        data = load_mnist(args.data_dir, split="test")
        try:
            train = load_mnist(args.data_dir, split="train")
        except DownloadError as exc:
            train = None
            sys.stderr.write(
                "The MNIST training set is not available, so the test-only "
                f"protocol runs. ({exc})\n"
            )
    except ValueError as exc:
        error(str(exc))
    try:
        results_file.check_data(DATASET, data_identity(data, train))
        finished = _load_finished(results_file, args.output_dir)
    except UsageError as exc:
        error(str(exc))
    methods = mnist.METHODS if args.method == "all" else (args.method,)
    for method in finished:
        sys.stderr.write(f"mnist {method}: in {results_file.path}, skipped\n")
    progress = _UnitProgress()
    writer = _UnitWriter(results_file, args.output_dir, progress)

    # A signal sets a flag (see `durable.handle_signals`), checked here
    # between units and by `StopCheck` between batches and epochs.
    def started(*unit):
        check_stop()
        progress.started(*unit)

    def finished_unit(*unit):
        writer(*unit)  # a unit that finished is kept
        check_stop()

    try:
        report = mnist.run(
            data,
            methods,
            epochs=args.epochs,
            num_samples=args.num_samples,
            seed=args.seed,
            callbacks=[_Progress(), StopCheck()],
            train=train,
            finished=finished,
            on_finished=finished_unit,
            on_started=started,
        )
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM or SIGHUP
        status, word = interrupt_status(exc)
        results_file.close("interrupted")
        kept = [r["method"] for r in results_file.results]
        where = (
            f"{', '.join(kept)} kept in {results_file.path} (--resume continues)"
            if kept and results_file.write_error is None
            else "nothing to report"
        )
        sys.stderr.write(f"\n{word} before the evaluation: {where}\n")
        return status
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    timings = {
        r["method"]: {k: r[k] for k in ("train_seconds", "predict_ms") if k in r}
        for r in results_file.results
    }
    print(report_text(report, args.num_samples, timings))
    # The figures, then the final status: a signal until then ends the run
    # as "interrupted" (the report is printed, every unit is in the file).
    paths, figure_error, stopped = [], None, None
    try:
        check_stop()
        paths = write_figures(report, args.output_dir)
        check_stop()
    except OSError as exc:
        figure_error = exc
    except KeyboardInterrupt as exc:
        stopped = exc
    if stopped is None:
        stopped = stop_requested()
    final = "complete" if stopped is None else "interrupted"
    if not results_file.close(final) and results_file.write_error is not None:
        writer.error = results_file.write_error
    status = 0 if stopped is None else interrupt_status(stopped)[0]
    if writer.error is not None:
        sys.stderr.write(
            f"cannot write the results in {args.output_dir}: "
            f"{writer.error.strerror or writer.error}; the report above is "
            "complete (an earlier results.json there is intact)\n"
        )
        status = WRITE_FAILED
    if figure_error is not None:
        why = figure_error.strerror or str(figure_error)
        sys.stderr.write(
            f"cannot write the figures in {args.output_dir}: {why}; the report "
            "above is complete\n"
        )
        return WRITE_FAILED
    if stopped is not None:
        kept = (
            f", every method is in {results_file.path}" if writer.error is None else ""
        )
        sys.stderr.write(
            f"\n{interrupt_status(stopped)[1]} after the evaluation: the report "
            f"above is complete{kept}\n"
        )
        return status
    for path in [results_file.path, *paths]:
        print(f"wrote {path}")
    return status
