"""`keras-uncertainty mnist`: the MNIST article, referral and rotation shift."""

import os
import sys

import keras

from keras_uncertainty.cli.results import (
    WRITE_FAILED,
    check_writable,
    interrupt_status,
    write_bytes_atomic,
)
from keras_uncertainty.cli.usage import UsageError

# The bytes the start-up check writes in --output-dir: more than the largest
# figure (about 100 KiB at 100 dpi).
FIGURE_PROBE_BYTES = 1 << 20


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


# Each method's name in tables and figures, and its short name, in the
# order the report lists them; the deterministic baseline comes last.
_NAMES = {
    "mc-dropout": ("MC dropout", "MC dropout"),
    "ensemble": ("Deep Ensemble", "ensemble"),
    "deterministic": ("deterministic softmax", "deterministic"),
}


def _label(method):
    return _NAMES[method][0]


def _short(method):
    return _NAMES[method][1]


def _methods(report):
    return sorted({m for m, _ in report.scores}, key=list(_NAMES).index)


def report_text(report, num_samples):
    """The printed report: accuracy, votes, referral and shift tables."""
    from keras_uncertainty.experiments import mnist

    methods = _methods(report)
    lines = [f"MNIST, {report.protocol}:"]
    for method in methods:
        s = report.scores[method, 0]
        lines.append(
            f"  {_label(method):<22} accuracy {100 * s.accuracy:6.2f}%  "
            f"NLL {s.nll:.3f}  ECE {s.ece:.3f}"
        )
    lines.append("")
    lines.append("Votes of the samples for the article's two eights:")
    for method in methods:
        if method == mnist.DETERMINISTIC:
            continue
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
    lines.append(f"T = {num_samples} MC dropout samples; {report.seconds:.0f} s.")
    return "\n".join(lines)


def write_figures(report, output_dir):
    """Vote histograms, retention curves and reliability diagrams as PNGs,
    each written atomically (the old file or the new one, never a part);
    returns the paths written.

    Raises:
        OSError: A figure could not be written (those before it were).
    """
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from keras_uncertainty import plots
    from keras_uncertainty.experiments import mnist

    os.makedirs(output_dir, exist_ok=True)
    methods = _methods(report)
    sampled = [m for m in methods if m != mnist.DETERMINISTIC]
    paths = []

    def save(fig, name):
        path = os.path.join(output_dir, name)
        fig.tight_layout()
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=100)
        plt.close(fig)
        write_bytes_atomic(path, png.getvalue())
        paths.append(path)

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


def run_mnist(args, error):
    """Runs the command; `error(message)` exits with status 2. Returns the
    exit status: 0, 4 when a figure could not be written (the report is
    printed), 130 when interrupted (143 on SIGTERM, 129 on SIGHUP)."""
    from keras_uncertainty.datasets import DownloadError, load_mnist
    from keras_uncertainty.experiments import mnist

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
    try:  # a full disk or quota fails now, not after the training
        check_writable(
            os.path.join(args.output_dir, "reliability.png"),
            size=FIGURE_PROBE_BYTES,
            label="--output-dir",
        )
    except UsageError as exc:
        error(str(exc))
    methods = mnist.METHODS if args.method == "all" else (args.method,)
    try:
        report = mnist.run(
            data,
            methods,
            epochs=args.epochs,
            num_samples=args.num_samples,
            seed=args.seed,
            callbacks=[_Progress()],
            train=train,
        )
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM or SIGHUP
        status, word = interrupt_status(exc)
        sys.stderr.write(f"\n{word} before the evaluation: nothing to report\n")
        return status
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    print(report_text(report, args.num_samples))
    try:
        paths = write_figures(report, args.output_dir)
    except OSError as exc:
        why = exc.strerror or str(exc)
        sys.stderr.write(
            f"cannot write the figures in {args.output_dir}: {why}; the report "
            "above is complete\n"
        )
        return WRITE_FAILED
    for path in paths:
        print(f"wrote {path}")
    return 0
