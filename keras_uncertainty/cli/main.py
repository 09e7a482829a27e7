"""`keras-uncertainty`: the toolkit's command line.

Arguments are parsed and checked, and output paths prepared, before
TensorFlow is imported: importing `keras_uncertainty` loads nothing heavy
(its public names load on first use), and this module, `usage`, `results`,
`durable`, `keras_uncertainty.experiments.protocols` and the method
registry (`keras_uncertainty.experiments.registry`) import neither Keras nor
TensorFlow. A usage error prints one line and exits with status 2 in a
fraction of a second. Exit statuses:

- 0: done;
- 1: a run failed (every split of a data set and method diverged);
- 2: a usage error, or data or an output path that cannot be used (checked
  before any training);
- 3: data that could not be downloaded (the message says how to provide it
  locally);
- 4: the results file (or an MNIST figure) could not be written (disk full,
  ...): the table or report is printed and the earlier file is left intact;
- 130: interrupted (Ctrl-C, also while TensorFlow loads); what had finished
  is kept;
- 143 (SIGTERM) and 129 (SIGHUP): ended like Ctrl-C, what had finished is
  kept.

A signal only sets a flag (`keras_uncertainty.cli.durable.handle_signals`);
the run stops where it checks it: after each training batch and epoch, and
between units (a second signal stops it at once).

Results files (`uci --output`, `mnist --output-dir`'s `results.json`) are
written after every finished data set and method, atomically, with their
status; see `keras_uncertainty.cli.results.ResultsFile`.
"""

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import tempfile

import keras_uncertainty as ku
from keras_uncertainty import _backend
from keras_uncertainty.cli import durable, usage
from keras_uncertainty.cli.results import (
    MNIST_RESULTS_NAME,
    MnistResultsFile,
    ResultsFile,
)
from keras_uncertainty.cli.usage import UsageError
from keras_uncertainty.experiments import protocols, registry

# What each command imports once its arguments are checked: TensorFlow and
# the parts of the package it runs (see `_import_tensorflow`).
_COMMAND_MODULES = {
    "demo": (
        "keras_uncertainty.datasets",
        "keras_uncertainty.losses",
        "keras_uncertainty.models",
        "keras_uncertainty.sampling",
    ),
    "uci": ("keras_uncertainty.cli.uci",),
    "mnist": ("keras_uncertainty.cli.mnist",),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser():
    """The argument parser of `keras-uncertainty` and its commands.

    Returns:
        An `argparse.ArgumentParser` whose errors print one line and exit 2.
    """
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
    demo.add_argument("--epochs", type=usage.positive_int, default=300)
    demo.add_argument("--num-samples", type=usage.positive_int, default=100)
    demo.add_argument("--seed", type=usage.seed, default=0)

    default = protocols.PROTOCOLS[protocols.DEFAULT_PROTOCOL]
    published = protocols.PROTOCOLS["published"]
    uci = commands.add_parser(
        "uci",
        help="the UCI regression benchmark against the published numbers",
        description=(
            "Trains and evaluates every method (MC dropout with and without a "
            "variance head, deep ensembles, Flipout VI, last-layer Laplace, "
            "SWAG, BatchEnsemble, MIMO, evidential regression) on the UCI "
            "splits; prints RMSE and test NLL (mean ± standard error over "
            "splits, original units) beside the published numbers."
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
        choices=[*registry.names(registry.UCI), "all"],
    )
    uci.add_argument(
        "--splits",
        type=usage.splits,
        default=None,
        help="e.g. 0-19, 3 or 0,2,5 (default: all)",
    )
    uci.add_argument(
        "--protocol",
        default=protocols.DEFAULT_PROTOCOL,
        choices=sorted(protocols.PROTOCOLS),
        help=(
            f"default: {default['epochs_multiplier']:g}x epochs, Adam "
            f"{default['learning_rate']:g} with {default['schedule']} decay, "
            "every method; published: the MC "
            f"dropout paper's grid results ({published['epochs_multiplier']:g}x "
            f"epochs, Adam {published['learning_rate']:g}, "
            f"{', '.join(published['methods'])} only, about 10x the training "
            "time)"
        ),
    )
    uci.add_argument(
        "--epochs-multiplier",
        type=usage.positive_float,
        default=None,
        help=(
            "times n_epochs.txt (default: the protocol's, "
            f"{default['epochs_multiplier']:g} or "
            f"{published['epochs_multiplier']:g})"
        ),
    )
    uci.add_argument(
        "--num-samples",
        type=usage.positive_int,
        default=protocols.NUM_SAMPLES,
        help=f"MC samples for the test NLL (the paper: {protocols.NUM_SAMPLES:,})",
    )
    uci.add_argument(
        "--adversarial-epsilon",
        type=usage.non_negative_float,
        default=protocols.ADVERSARIAL_EPSILON,
        help=(
            "fast-gradient-sign step of the ensemble's adversarial training, "
            "as a fraction of each feature's range (the paper: "
            f"{protocols.ADVERSARIAL_EPSILON:g}; 0: off)"
        ),
    )
    uci.add_argument(
        "--variance-objective",
        choices=protocols.VARIANCE_OBJECTIVES,
        default=None,
        help=(
            "how the variance heads train (faithful: ku.losses.GaussianNLL's "
            "default, Stirn et al. 2023; beta-nll: beta 0.5; nll: plain; "
            f"default: the protocol's, {default['variance_objective']} or "
            f"{published['variance_objective']})"
        ),
    )
    uci.add_argument("--seed", type=usage.seed, default=0)
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
        "--method",
        default="all",
        choices=[*registry.names(registry.MNIST), "all"],
        help="the deterministic baseline always runs too (default: all)",
    )
    mnist.add_argument(
        "--output-dir",
        default="mnist-figures",
        help="where the PNG files go (default: ./mnist-figures)",
    )
    mnist.add_argument(
        "--epochs",
        type=usage.positive_int,
        default=None,
        help="epochs of every network (default: 30 for MC dropout and VI, 10 else)",
    )
    mnist.add_argument(
        "--num-samples",
        type=usage.positive_int,
        default=100,
        help="MC dropout samples (the article: 100)",
    )
    mnist.add_argument("--seed", type=usage.seed, default=0)
    mnist.add_argument(
        "--resume",
        action="store_true",
        help=(
            "skip the methods already in --output-dir's results.json "
            "(written with the same settings and data) and add the rest"
        ),
    )
    for command in (demo, uci, mnist):
        command.add_argument(
            "--verbose",
            action="store_true",
            help="show TensorFlow's start-up log lines (hidden by default)",
        )
    return parser


def resolve_protocol(args):
    """Fills in the protocol's epochs multiplier, Adam step and methods.

    Sets `args.epochs_multiplier` (when not given), `args.method` (when the
    protocol runs fewer methods than "all"), `args.learning_rate` and
    `args.schedule`.

    Args:
        args: The parsed `uci` arguments.

    Raises:
        UsageError: A flag contradicts the protocol.
    """
    protocol = protocols.PROTOCOLS[args.protocol]
    if args.epochs_multiplier is None:
        args.epochs_multiplier = protocol["epochs_multiplier"]
    elif args.protocol != protocols.DEFAULT_PROTOCOL and (
        args.epochs_multiplier != protocol["epochs_multiplier"]
    ):
        raise UsageError(
            f"--protocol {args.protocol} trains {protocol['epochs_multiplier']:g}x "
            f"epochs; received --epochs-multiplier {args.epochs_multiplier:g}"
        )
    if args.variance_objective is None:
        args.variance_objective = protocol["variance_objective"]
    elif args.protocol != protocols.DEFAULT_PROTOCOL and (
        args.variance_objective != protocol["variance_objective"]
    ):
        raise UsageError(
            f"--protocol {args.protocol} trains by the "
            f"{protocol['variance_objective']} objective; received "
            f"--variance-objective {args.variance_objective}"
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
    args.schedule = protocol["schedule"]


def uci_settings(args):
    """What `--resume` requires to be the same as in the file it resumes.

    Args:
        args: The parsed `uci` arguments, after `resolve_protocol`.

    Returns:
        A dict of the settings, as the results file records them.
    """
    return {
        "protocol": args.protocol,
        "learning_rate": args.learning_rate,
        "schedule": args.schedule,
        "splits": args.splits,
        "epochs_multiplier": args.epochs_multiplier,
        "num_samples": args.num_samples,
        "adversarial_epsilon": args.adversarial_epsilon,
        "variance_objective": args.variance_objective,
        "seed": args.seed,
    }


def mnist_settings(args):
    """What `mnist --resume` requires to be the same as in the file it
    resumes (the data and protocol are checked by their SHA-256).

    Args:
        args: The parsed `mnist` arguments.

    Returns:
        A dict of the settings, as `results.json` records them.
    """
    return {"epochs": args.epochs, "num_samples": args.num_samples, "seed": args.seed}


def run_demo(epochs, num_samples, seed):
    """Trains the article's regression network and prints its uncertainty.

    Args:
        epochs: Training epochs.
        num_samples: MC dropout samples per prediction.
        seed: The random seed of the data, the weights and the samples.
    """
    # Lazily: this module is read before TensorFlow loads.
    import keras
    import numpy as np

    from keras_uncertainty.cli.stopping import StopCheck

    keras.utils.set_random_seed(seed)
    x, y = ku.datasets.toy_regression(seed=seed)
    model = ku.models.article_regression_mlp(num_inputs=1, dropout_rate=0.1)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=ku.losses.gaussian_nll)
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0, callbacks=[StopCheck()])
    points = np.array([[-2.5], [-1.5], [0.0], [1.5], [2.5], [5.0]], "float32")
    where = ["data", "data", "gap", "data", "data", "outside"]
    pred = ku.predict_regression(model, points, num_samples=num_samples, seed=seed)
    durable.check_stop()
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
    """Runs the command line.

    Args:
        argv: The arguments after the program's name (default: `sys.argv`).

    Returns:
        The exit status. A usage error exits (`SystemExit`, status 2) instead.
    """
    # SIGINT, SIGTERM and SIGHUP set a flag that the run checks where it can
    # stop (between batches, epochs and units), never raising elsewhere.
    previous = durable.handle_signals()
    try:
        return _main(argv)
    except KeyboardInterrupt as exc:
        status, word = durable.interrupt_status(exc)
        sys.stderr.write(f"\nkeras-uncertainty: {word}\n")
        return status
    finally:
        durable.end_signals(previous)


def _exit_interrupted(signum, frame):
    """Ctrl-C while TensorFlow loads: nothing has started, so leave at once
    (a library that catches KeyboardInterrupt during its import would
    otherwise swallow it)."""
    status, word = 130, "interrupted"
    if signum != signal.SIGINT:
        status, word = 128 + signum, f"terminated by {signal.Signals(signum).name}"
    sys.stderr.write(f"\nkeras-uncertainty: {word}\n")
    sys.stderr.flush()
    os._exit(status)


def _import_tensorflow(command):
    """Imports Keras (and so TensorFlow) and what `command` runs, checking
    Keras's backend; Ctrl-C meanwhile exits 130 at once."""
    signums = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = [signal.signal(s, _exit_interrupted) for s in signums]
    try:
        _backend.check()
        for module in _COMMAND_MODULES[command]:
            importlib.import_module(module)
    finally:
        for signum, handler in zip(signums, previous):
            signal.signal(signum, handler)


@contextlib.contextmanager
def _startup_logs_hidden(verbose):
    """Hides what TensorFlow's libraries write to file descriptor 2 while
    they load (absl, oneDNN and CUDA lines, written before
    `TF_CPP_MIN_LOG_LEVEL` applies), unless `--verbose`; Python's own
    `sys.stderr` keeps the real stderr meanwhile, and an import that fails
    shows what was hidden."""
    if verbose:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    real_stderr = sys.stderr
    with tempfile.TemporaryFile() as hidden:
        os.dup2(hidden.fileno(), 2)
        stand_in = sys.stderr = open(saved, "w", closefd=False)
        failed = True
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            sys.stderr = real_stderr
            # A logging handler made meanwhile (TensorFlow's, absl's) took
            # the stand-in as its stream: it writes to the real stderr from
            # now on, not to the descriptor closed below (a "--- Logging
            # error --- OSError: [Errno 9] Bad file descriptor" traceback at
            # each record, or worse, a later file that reuses the number).
            _repoint_log_handlers(stand_in, real_stderr)
            stand_in.close()  # closefd=False: `saved` stays open until:
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                hidden.seek(0)
                real_stderr.write(hidden.read().decode(errors="replace"))
                real_stderr.flush()


def _log_handlers():
    """Every live `logging` handler: those of the loggers, and absl's (made
    at import, attached to a logger only once `absl.app` runs)."""
    handlers = {}
    loggers = [logging.root, *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            handlers[id(handler)] = handler
    absl_logging = sys.modules.get("absl.logging")
    if absl_logging is not None:
        handler = absl_logging.get_absl_handler().python_handler
        handlers[id(handler)] = handler
    return list(handlers.values())


def _repoint_log_handlers(old, new):
    """Makes every stream handler that writes to `old` write to `new`."""
    for handler in _log_handlers():
        if isinstance(handler, logging.StreamHandler) and handler.stream is old:
            handler.setStream(new)


@contextlib.contextmanager
def _tensorflow_warnings_hidden(verbose):
    """Hides TensorFlow's Python log records below ERROR (its
    "tf.function retracing" notes about the benchmark's many models) for the
    run, unless `--verbose`; the logger's level is restored after it."""
    if verbose:
        yield
        return
    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _find_devices():
    """Lets TensorFlow look for its devices now, while its log lines are
    hidden (its CUDA look-up logs an error line on a machine without a GPU)."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.list_physical_devices()


def _main(argv):
    parser = build_parser()
    args = parser.parse_args(argv)

    def error(message):
        parser.exit(2, f"keras-uncertainty {args.command}: error: {message}\n")

    results_file = None
    try:
        if args.command == "uci":
            usage.check_datasets(args.datasets, args.data_dir)
            resolve_protocol(args)
            if args.resume and not args.output:
                raise UsageError("--resume needs --output, the file to resume")
            if args.output:
                usage.check_output_file(args.output)
            results_file = ResultsFile(
                args.output, uci_settings(args), resume=args.resume
            )
        if args.command == "mnist":
            usage.check_output_dir(args.output_dir)
            results_file = MnistResultsFile(
                os.path.join(args.output_dir, MNIST_RESULTS_NAME),
                mnist_settings(args),
                resume=args.resume,
            )
    except UsageError as exc:
        error(str(exc))
    if not args.verbose:
        # "3" hides TensorFlow's C++ error lines too: a run prints lines such
        # as oneDNN's "E ... supports DT_INT64 only on platforms with
        # AVX-512. Falling back ..." mid-run, which are not failures (a real
        # failure raises, and the command reports it in one line).
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _startup_logs_hidden(args.verbose):
        _import_tensorflow(args.command)
        _find_devices()
    with _tensorflow_warnings_hidden(args.verbose):
        return _run(args, results_file, error)


def _run(args, results_file, error):
    if args.command == "demo":
        run_demo(args.epochs, args.num_samples, args.seed)
        return 0
    from keras_uncertainty.datasets import DownloadError

    try:
        if args.command == "mnist":
            from keras_uncertainty.cli.mnist import run_mnist

            return run_mnist(args, results_file, error)
        from keras_uncertainty.cli.uci import run_uci

        return run_uci(args, results_file, error)
    except DownloadError as exc:
        sys.stderr.write(f"keras-uncertainty {args.command}: error: {exc}\n")
        return 3
    except UsageError as exc:
        error(str(exc))
