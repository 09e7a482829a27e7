"""`keras-uncertainty`: the toolkit's command line.

Usage errors print one line and exit with status 2, without a traceback.
"""

import argparse
import os
import sys


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
    demo.add_argument("--seed", type=int, default=0)

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
        "--epochs-multiplier",
        type=_positive_float,
        default=10.0,
        help="times n_epochs.txt (the MC dropout paper: 10)",
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
    uci.add_argument("--seed", type=int, default=0)
    uci.add_argument("--output", default=None, help="write the results as JSON")

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
    mnist.add_argument("--seed", type=int, default=0)
    return parser


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
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.command == "demo":
        run_demo(args.epochs, args.num_samples, args.seed)
        return 0

    def error(message):
        parser.exit(2, f"keras-uncertainty {args.command}: error: {message}\n")

    if args.command == "mnist":
        from keras_uncertainty.cli.mnist import run_mnist

        return run_mnist(args, error)
    from keras_uncertainty.cli.uci import run_uci

    return run_uci(args, error)


if __name__ == "__main__":
    sys.exit(main())
