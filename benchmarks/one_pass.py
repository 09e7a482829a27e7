"""Speed of the one-pass methods: MIMO and evidential heads vs one forward pass.

Run: python benchmarks/one_pass.py [--repeats 15] [--output FILE]

Every figure is the median wall time of `--repeats` runs after one warm-up
(which pays for tracing), the variants of a case timed in rounds in shuffled
order in one process (see `_timing.py`). N = 1000 inputs, one call
(`batch_size=N`). Cases:

- mimo_lenet: a LeNet-5-sized CNN (Conv 6-5, pool, Conv 16-5, pool, Dense
  120, Dense 84) on 28x28x1 images, 10 classes. `ku` is
  `ku.predict_classification` of a `ku.MIMO` with M = 3 (input channels and
  heads 3x, the rest shared); `floor` is one compiled forward pass
  (`tf.function`, from the numpy input to a numpy result) of the
  single-output backbone with a softmax head; `network` is one compiled
  forward pass of the MIMO network itself (the same work as `ku` without
  the engine's reduction). Target
  (issue 24): ku <= 1.1x floor.
  On 28x28x1 inputs LeNet's first convolution is a third of the work, and
  MIMO triples its input channels: the network itself (`network`, the
  repeated input through `call`) costs about 1.5x; `ku` runs the folded
  stem (`fold_stem=True`: the first convolution once, with the members'
  kernel slices summed, exact), which removes that.
- mimo_cnn_light_stem: a CIFAR-sized CNN (32x32x3; Conv 16-3, Conv 32-3,
  pool, Conv 64-3, pool, global average pooling), where the stem is a small
  part of the work as in the paper's ResNets: the same three timings.
- evidential_regression_lenet / evidential_classification_lenet: the same
  CNN with a `NormalInverseGammaHead(1)` / `DirichletHead(10)`;
  `ku` is `ku.predict_regression` / `predict_classification` (the head's reducer),
  `floor` one compiled forward pass of the same model. Target: ku <= 1.05x.
- evidential_regression_mlp: an 8-50-(4) MLP with a NIG head, where one
  forward pass is so cheap that the fixed cost of the call shows.
"""

import json

import keras
import numpy as np
import tensorflow as tf
from _timing import benchmark_main, timed_rounds

import keras_uncertainty as ku

N = 1000


def lenet_features(shape):
    inputs = keras.Input(shape)
    h = keras.layers.Conv2D(6, 5, activation="relu")(inputs)
    h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.Conv2D(16, 5, activation="relu")(h)
    h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(120, activation="relu")(h)
    h = keras.layers.Dense(84, activation="relu")(h)
    return keras.Model(inputs, h)


def light_stem_features(shape):
    inputs = keras.Input(shape)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(h)
    h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(h)
    h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, h)


def with_head(features, head):
    inputs = keras.Input(features.inputs[0].shape[1:])
    return keras.Model(inputs, head(features(inputs)))


def floor(model, x):
    """One compiled forward pass of the N rows, from the numpy array to a
    numpy result (as `ku` goes: the input's conversion counts in both)."""
    forward = tf.function(lambda batch: model(batch, training=False))
    return lambda: forward(tf.convert_to_tensor(x)).numpy()


def run(repeats):
    rng = np.random.default_rng(0)
    rows = []

    def record(case, target, **seconds):
        row = {"case": case, "N": N, **{f"{k}_s": v for k, v in seconds.items()}}
        row["ku_over_floor"] = seconds["ku"] / seconds["floor"]
        if "network" in seconds:
            row["network_over_floor"] = seconds["network"] / seconds["floor"]
        row["target"] = target
        row["meets_target"] = row["ku_over_floor"] <= target
        rows.append(row)
        print(json.dumps(row), flush=True)

    keras.utils.set_random_seed(0)
    images = rng.normal(size=(N, 28, 28, 1)).astype("float32")

    single = with_head(
        lenet_features((28, 28, 1)), keras.layers.Dense(10, activation="softmax")
    )
    mimo = ku.MIMO(
        lenet_features,
        (28, 28, 1),
        num_outputs=10,
        num_members=3,
        output_activation="softmax",
    )
    record(
        "mimo_lenet",
        1.1,
        **timed_rounds(
            repeats,
            ku=lambda: ku.predict_classification(mimo, images, batch_size=N, verbose=0),
            floor=floor(single, images),
            network=floor(mimo, images),
        ),
    )

    cifar = rng.normal(size=(N, 32, 32, 3)).astype("float32")
    single = with_head(
        light_stem_features((32, 32, 3)), keras.layers.Dense(10, activation="softmax")
    )
    mimo = ku.MIMO(
        light_stem_features,
        (32, 32, 3),
        num_outputs=10,
        num_members=3,
        output_activation="softmax",
    )
    record(
        "mimo_cnn_light_stem",
        1.1,
        **timed_rounds(
            repeats,
            ku=lambda: ku.predict_classification(mimo, cifar, batch_size=N, verbose=0),
            floor=floor(single, cifar),
            network=floor(mimo, cifar),
        ),
    )

    nig = with_head(
        lenet_features((28, 28, 1)), ku.evidential.NormalInverseGammaHead(1)
    )
    record(
        "evidential_regression_lenet",
        1.05,
        **timed_rounds(
            repeats,
            ku=lambda: ku.predict_regression(
                nig, images, batch_size=N, verbose=0
            ),
            floor=floor(nig, images),
        ),
    )
    dirichlet = with_head(lenet_features((28, 28, 1)), ku.evidential.DirichletHead(10))
    record(
        "evidential_classification_lenet",
        1.05,
        **timed_rounds(
            repeats,
            ku=lambda: ku.predict_classification(
                dirichlet, images, batch_size=N, verbose=0
            ),
            floor=floor(dirichlet, images),
        ),
    )

    vectors = rng.normal(size=(N, 8)).astype("float32")
    inputs = keras.Input((8,))
    h = keras.layers.Dense(50, activation="relu")(inputs)
    mlp = keras.Model(inputs, ku.evidential.NormalInverseGammaHead(1)(h))
    record(
        "evidential_regression_mlp",
        1.05,
        **timed_rounds(
            repeats,
            ku=lambda: ku.predict_regression(
                mlp, vectors, batch_size=N, verbose=0
            ),
            floor=floor(mlp, vectors),
        ),
    )
    return rows


def markdown(rows):
    lines = [
        "| case | ku (ms) | one forward pass (ms) | ratio | target |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['case']} | {1000 * row['ku_s']:.1f} | "
            f"{1000 * row['floor_s']:.1f} | {row['ku_over_floor']:.2f}x | "
            f"<= {row['target']}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    benchmark_main(__doc__, "one_pass", run, markdown)
