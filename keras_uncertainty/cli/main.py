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
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.command == "demo":
        run_demo(args.epochs, args.num_samples, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
