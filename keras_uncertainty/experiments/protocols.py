"""The UCI benchmark's protocols and defaults, in one place.

`keras_uncertainty.experiments.uci` trains with these defaults and
`keras-uncertainty uci` offers them as flags. This module imports neither
Keras nor TensorFlow, so the command line reads it before TensorFlow loads.
"""

# The data sets of the benchmark, by folder name (`ku.datasets.UCI_DATASETS`).
UCI_DATASETS = (
    "bostonHousing",
    "concrete",
    "energy",
    "naval-propulsion-plant",
    "protein-tertiary-structure",
    "wine-quality-red",
    "yacht",
)
# The methods, in the order they run and are reported (one class each in
# `keras_uncertainty.experiments.uci_methods`).
METHODS = (
    "mc-dropout",
    "hetero-mc-dropout",
    "ensemble",
    "vi",
    "laplace",
    "swag",
    "batch-ensemble",
    "mimo",
    "evidential",
)
# Adam's step size. The papers' code uses Keras's default 1e-3; see the
# "UCI benchmark" section of docs/guide/benchmarks.md for the runs that chose
# these defaults.
LEARNING_RATE = 1e-2
# How the step changes over training: "cosine" decays it to 0 (see the
# "UCI benchmark" section of docs/guide/benchmarks.md for the validation runs
# that chose it).
SCHEDULE = "cosine"
# Training epochs: this times each data set's n_epochs.txt.
EPOCHS_MULTIPLIER = 10.0
# Lakshminarayanan et al. (2017): adversarial training with a fast-gradient-
# sign step of 1% of each input feature's range.
ADVERSARIAL_EPSILON = 0.01
# MC samples for the test NLL (the MC dropout paper: 10,000).
NUM_SAMPLES = 10000

# The MC dropout paper's published grid results, from its public code: 100x
# base epochs, Keras's default Adam step, MC dropout only.
PUBLISHED_EPOCHS_MULTIPLIER = 100.0
PUBLISHED_LEARNING_RATE = 1e-3
PUBLISHED_SCHEDULE = "constant"
PUBLISHED_METHODS = ("mc-dropout",)

# The `mnist` command's methods, in the order they run and are reported
# (one class each in `keras_uncertainty.experiments.mnist_methods`); the
# deterministic baseline runs after them.
MNIST_METHODS = (
    "mc-dropout",
    "ensemble",
    "vi",
    "laplace",
    "swag",
    "batch-ensemble",
    "mimo",
    "sngp",
    "evidential",
)
MNIST_BASELINE = "deterministic"

DEFAULT_PROTOCOL = "default"
# `uci --protocol NAME`: its epochs multiplier, Adam step, and the methods it
# runs (None: every method).
PROTOCOLS = {
    DEFAULT_PROTOCOL: {
        "epochs_multiplier": EPOCHS_MULTIPLIER,
        "learning_rate": LEARNING_RATE,
        "schedule": SCHEDULE,
        "methods": None,
    },
    "published": {
        "epochs_multiplier": PUBLISHED_EPOCHS_MULTIPLIER,
        "learning_rate": PUBLISHED_LEARNING_RATE,
        "schedule": PUBLISHED_SCHEDULE,
        "methods": PUBLISHED_METHODS,
    },
}
