"""`keras-uncertainty`: the toolkit's command line.

This module sits outside the `keras_uncertainty` package on purpose: the
package imports TensorFlow, which takes seconds and prints start-up lines,
so arguments are parsed and checked here first. A usage error prints one
line and exits with status 2 before TensorFlow is imported. Exit statuses:

- 0: done;
- 1: a run failed (every split of a data set and method diverged);
- 2: a usage error, or data or an output path that cannot be used (checked
  before any training);
- 3: data that could not be downloaded (the message says how to provide it
  locally);
- 130: interrupted (Ctrl-C); what had finished is kept.

Results files (`uci --output`) are written after every finished data set and
method, atomically, with their status; see `ResultsFile`.
"""

import argparse
import json
import os
import signal
import sys
import tempfile

_MAX_SEED = 2**32 - 1
# `uci --protocol`: the toolkit's defaults, and the MC dropout paper's
# published grid results (its public code: 100x base epochs, Keras's default
# Adam step, MC dropout only). "default" matches
# `keras_uncertainty.experiments.uci.LEARNING_RATE`.
PROTOCOLS = {
    "default": {"epochs_multiplier": 10.0, "learning_rate": 1e-2, "methods": None},
    "published": {
        "epochs_multiplier": 100.0,
        "learning_rate": 1e-3,
        "methods": ("mc-dropout",),
    },
}
RESULTS_FORMAT = "keras-uncertainty uci results, version 1"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer, received {text!r}"
        )
    return value


def _finite_float(zero_allowed):
    """An argparse type: a finite float > 0 (or >= 0 when `zero_allowed`)."""
    expected = "a number >= 0" if zero_allowed else "a positive number"

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        low_ok = value >= 0 if zero_allowed else value > 0
        if not low_ok or value == float("inf"):
            raise argparse.ArgumentTypeError(f"expected {expected}, received {text!r}")
        return value

    return parse


def _seed(text):
    """An argparse type: an integer seed in [0, 2**32 - 1] (numpy's range)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= _MAX_SEED:
        raise argparse.ArgumentTypeError(
            f"expected an integer in [0, {_MAX_SEED}], received {text!r}"
        )
    return value


_positive_float = _finite_float(zero_allowed=False)
_non_negative_float = _finite_float(zero_allowed=True)


def build_parser():
    parser = _Parser(
        prog="keras-uncertainty",
        description="Predictive uncertainty for Keras models.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="train the article's regression network and print its uncertainty",
        description=(
            "Trains Dense 20-20-2 with MC dropout and the Gaussian NLL on 1-D "
            "data with a gap, then prints mean, total, aleatoric and epistemic "
            "standard deviation at a few points."
        ),
    )
    demo.add_argument("--epochs", type=_positive_int, default=300)
    demo.add_argument("--num-samples", type=_positive_int, default=100)
    demo.add_argument("--seed", type=_seed, default=0)

    uci = commands.add_parser(
        "uci",
        help="the UCI regression benchmark against the published numbers",
        description=(
            "Trains and evaluates MC dropout, heteroscedastic MC dropout and "
            "deep ensembles on the UCI splits; prints RMSE and test NLL (mean "
            "± standard error over splits, original units) beside the "
            "published numbers."
        ),
    )
    uci.add_argument(
        "datasets",
        nargs="*",
        metavar="DATASET",
        help="data set names or folders (default: yacht)",
    )
    uci.add_argument(
        "--data-dir", default=None, help="folder holding one subfolder per data set"
    )
    uci.add_argument(
        "--method",
        default="all",
        choices=["mc-dropout", "hetero-mc-dropout", "ensemble", "all"],
    )
    uci.add_argument(
        "--splits", default=None, help="e.g. 0-19, 3 or 0,2,5 (default: all)"
    )
    uci.add_argument(
        "--protocol",
        default="default",
        choices=sorted(PROTOCOLS),
        help=(
            "default: 10x epochs, Adam 1e-2, every method; published: the MC "
            "dropout paper's grid results (100x epochs, Adam 1e-3, MC dropout "
            "only, about 10x the training time)"
        ),
    )
    uci.add_argument(
        "--epochs-multiplier",
        type=_positive_float,
        default=None,
        help="times n_epochs.txt (default: the protocol's, 10 or 100)",
    )
    uci.add_argument(
        "--num-samples",
        type=_positive_int,
        default=10000,
        help="MC samples for the test NLL (the paper: 10,000)",
    )
    uci.add_argument(
        "--adversarial-epsilon",
        type=_non_negative_float,
        default=0.01,
        help=(
            "fast-gradient-sign step of the ensemble's adversarial training, "
            "as a fraction of each feature's range (the paper: 0.01; 0: off)"
        ),
    )
    uci.add_argument("--seed", type=_seed, default=0)
    uci.add_argument(
        "--output",
        default=None,
        help=(
            "write the results as JSON, after every finished data set and "
            "method (atomically)"
        ),
    )
    uci.add_argument(
        "--resume",
        action="store_true",
        help=(
            "skip the data sets and methods already in --output (written "
            "with the same settings) and add the rest"
        ),
    )

    mnist = commands.add_parser(
        "mnist",
        help="the MNIST article: LeNet-5 votes, referral and rotation shift",
        description=(
            "Trains LeNet-5 with MC dropout and a deep ensemble on MNIST test "
            "images 2000-9999, evaluates on 0-1999 (and rotated by 30 and 60 "
            "degrees); prints accuracy, the votes for images 61 and 591 and "
            "the referral table, and writes the figures as PNG files."
        ),
    )
    mnist.add_argument(
        "--data-dir", default=None, help="folder holding the MNIST IDX files"
    )
    mnist.add_argument(
        "--method", default="all", choices=["mc-dropout", "ensemble", "all"]
    )
    mnist.add_argument(
        "--output-dir",
        default="mnist-figures",
        help="where the PNG files go (default: ./mnist-figures)",
    )
    mnist.add_argument(
        "--epochs",
        type=_positive_int,
        default=None,
        help="epochs of every network (default: 30 for MC dropout, 10 else)",
    )
    mnist.add_argument(
        "--num-samples",
        type=_positive_int,
        default=100,
        help="MC dropout samples (the article: 100)",
    )
    mnist.add_argument("--seed", type=_seed, default=0)
    return parser


def write_json_atomic(path, payload):
    """Writes `payload` as JSON to `path` so that a reader (or a crash) only
    ever sees the old file or the new one: a temporary file in the same
    folder, flushed and synced, then renamed over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, partial = tempfile.mkstemp(
        dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp"
    )
    try:
        with os.fdopen(handle, "w") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    except BaseException:
        try:
            os.remove(partial)
        except OSError:
            pass
        raise
    try:  # the rename itself survives a power loss once the folder is synced
        folder_handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(folder_handle)
    except OSError:
        pass
    finally:
        os.close(folder_handle)


class UsageError(Exception):
    """A problem with the arguments or files: one line, exit status 2."""


def _cannot_write_in(folder):
    """Why a file cannot be created in `folder`, or None. It tries, because
    permission bits do not tell (root, read-only mounts, quotas)."""
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".write-check.")
    except OSError as error:
        return error.strerror or str(error)
    os.close(handle)
    os.remove(probe)
    return None


def _prepare_folder(folder, name):
    """Creates `folder` if missing and checks that files can be made in it."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise UsageError(
            f"cannot create the folder of {name}: {error.strerror}"
        ) from None
    problem = _cannot_write_in(folder)
    if problem:
        raise UsageError(f"cannot write {name}: {problem}")


def check_output_file(path):
    """Creates `path`'s folder if missing and checks that it can be written."""
    if os.path.isdir(path):
        raise UsageError(f"--output {path!r} is a folder; expected a file path")
    _prepare_folder(os.path.dirname(os.path.abspath(path)), f"--output {path!r}")


def check_output_dir(path):
    """Creates the folder `path` if missing and checks that it can be written."""
    _prepare_folder(path, f"--output-dir {path!r}")


def resolve_protocol(args):
    """Fills in the protocol's epochs multiplier, Adam step and methods."""
    protocol = PROTOCOLS[args.protocol]
    if args.epochs_multiplier is None:
        args.epochs_multiplier = protocol["epochs_multiplier"]
    elif args.protocol != "default" and (
        args.epochs_multiplier != protocol["epochs_multiplier"]
    ):
        raise UsageError(
            f"--protocol {args.protocol} trains {protocol['epochs_multiplier']:g}x "
            f"epochs; received --epochs-multiplier {args.epochs_multiplier:g}"
        )
    if protocol["methods"] is not None:
        if args.method == "all":
            args.method = protocol["methods"][0]
        elif args.method not in protocol["methods"]:
            raise UsageError(
                f"--protocol {args.protocol} runs {', '.join(protocol['methods'])} "
                f"only; received --method {args.method}"
            )
    args.learning_rate = protocol["learning_rate"]


def uci_settings(args):
    """What `--resume` requires to be the same as in the file it resumes."""
    return {
        "protocol": args.protocol,
        "learning_rate": args.learning_rate,
        "splits": args.splits,
        "epochs_multiplier": args.epochs_multiplier,
        "num_samples": args.num_samples,
        "adversarial_epsilon": args.adversarial_epsilon,
        "seed": args.seed,
    }


class ResultsFile:
    """The `uci --output` file: settings, status and every finished unit.

    Layout: `{"format", "settings", "status", "results", "failures"}`.
    `results` holds one record per finished (data set, method) unit;
    `failures` one `{"dataset", "method", "reason"}` per unit that failed.
    `status` is "running" while units are still to come (a killed run
    leaves that), then "complete", "interrupted" or "failed: <reason>".
    Every change is written at once with `write_json_atomic`.

    Args:
        path: The file, or None (nothing is written).
        settings: The run's settings; `--resume` requires the file's to be
            the same.
        resume: Whether to keep the file's finished units (they are skipped).
    """

    def __init__(self, path, settings, resume=False):
        self.path, self.settings = path, settings
        self.results, self.failures = [], []
        self.carried = 0
        existing = bool(path) and os.path.exists(path)
        # An earlier file is replaced only once this run has a finished unit
        # to put in its place (or, resuming, keeps its units): a run that
        # fails or is stopped early never wipes earlier results.
        self._may_write = not existing or resume
        if resume and existing:
            earlier = self._read(path)
            if earlier["settings"] != settings:
                changed = sorted(
                    key
                    for key in set(settings) | set(earlier["settings"])
                    if settings.get(key) != earlier["settings"].get(key)
                )
                before = ", ".join(
                    f"{key}={earlier['settings'].get(key)!r}" for key in changed
                )
                now = ", ".join(f"{key}={settings.get(key)!r}" for key in changed)
                raise UsageError(
                    f"--resume: {path!r} was written with other settings "
                    f"({before}; this run has {now})"
                )
            self.results = list(earlier["results"])
            self.carried = len(self.results)

    @staticmethod
    def _read(path):
        try:
            with open(path) as f:
                earlier = json.load(f)
        except (OSError, ValueError) as error:
            raise UsageError(f"--resume: cannot read {path!r}: {error}") from None
        if not isinstance(earlier, dict) or earlier.get("format") != RESULTS_FORMAT:
            raise UsageError(
                f"--resume: {path!r} is not a results file of this version "
                f"(expected format {RESULTS_FORMAT!r})"
            )
        return earlier

    def finished(self, dataset, method):
        return any(
            r["dataset"] == dataset and r["method"] == method for r in self.results
        )

    def _write(self, status):
        if self.path and self._may_write:
            write_json_atomic(
                self.path,
                {
                    "format": RESULTS_FORMAT,
                    "settings": self.settings,
                    "status": status,
                    "results": self.results,
                    "failures": self.failures,
                },
            )

    def add(self, record):
        self.results.append(record)
        self._may_write = True
        self._write("running")

    def fail(self, dataset, method, reason):
        self.failures.append({"dataset": dataset, "method": method, "reason": reason})
        self._write("running")

    def close(self, status):
        """Writes the final status; returns whether it was written (not when
        a run that finished nothing would replace an earlier file)."""
        self._write(status)
        return bool(self.path) and self._may_write


def run_demo(epochs, num_samples, seed):
    import keras
    import numpy as np

    import keras_uncertainty as ku

    keras.utils.set_random_seed(seed)
    x, y = ku.datasets.toy_regression(seed=seed)
    model = ku.models.article_regression_mlp(num_inputs=1, dropout_rate=0.1)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=ku.losses.gaussian_nll)
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    points = np.array([[-2.5], [-1.5], [0.0], [1.5], [2.5], [5.0]], "float32")
    where = ["data", "data", "gap", "data", "data", "outside"]
    pred = ku.predict_regression(model, points, num_samples=num_samples, seed=seed)
    print(f"Trained {epochs} epochs on {len(x)} points; T = {num_samples} samples.")
    print(
        f"{'x':>6} {'where':>8} {'mean':>8} {'std':>8} {'aleatoric':>10} "
        f"{'epistemic':>10}"
    )
    for i, label in enumerate(where):
        print(
            f"{points[i, 0]:6.2f} {label:>8} {pred.mean[i, 0]:8.3f} "
            f"{pred.std[i, 0]:8.3f} {pred.aleatoric_std[i, 0]:10.3f} "
            f"{pred.epistemic_std[i, 0]:10.3f}"
        )


def main(argv=None):
    """Runs the command line; returns the exit status."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        # Also during TensorFlow's import, which can take seconds.
        sys.stderr.write("\nkeras-uncertainty: interrupted\n")
        return 130


def _exit_interrupted(signum, frame):
    """Ctrl-C while TensorFlow loads: nothing has started, so leave at once
    (a library that catches KeyboardInterrupt during its import would
    otherwise swallow it)."""
    sys.stderr.write("\nkeras-uncertainty: interrupted\n")
    sys.stderr.flush()
    os._exit(130)


def _import_the_package():
    """Imports `keras_uncertainty` (and so TensorFlow), Ctrl-C exiting 130."""
    previous = signal.signal(signal.SIGINT, _exit_interrupted)
    try:
        import keras_uncertainty  # noqa: F401
    finally:
        signal.signal(signal.SIGINT, previous)


def _main(argv):
    parser = build_parser()
    args = parser.parse_args(argv)

    def error(message):
        parser.exit(2, f"keras-uncertainty {args.command}: error: {message}\n")

    try:
        if args.command == "uci":
            resolve_protocol(args)
            if args.resume and not args.output:
                raise UsageError("--resume needs --output, the file to resume")
            if args.output:
                check_output_file(args.output)
            args.results_file = ResultsFile(
                args.output, uci_settings(args), resume=args.resume
            )
        if args.command == "mnist":
            check_output_dir(args.output_dir)
    except UsageError as exc:
        error(str(exc))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _import_the_package()
    if args.command == "demo":
        run_demo(args.epochs, args.num_samples, args.seed)
        return 0
    from keras_uncertainty.datasets import DownloadError

    try:
        if args.command == "mnist":
            from keras_uncertainty.cli.mnist import run_mnist

            return run_mnist(args, error)
        from keras_uncertainty.cli.uci import run_uci

        return run_uci(args, error)
    except DownloadError as exc:
        sys.stderr.write(f"keras-uncertainty {args.command}: error: {exc}\n")
        return 3
    except UsageError as exc:
        error(str(exc))


if __name__ == "__main__":
    sys.exit(main())
