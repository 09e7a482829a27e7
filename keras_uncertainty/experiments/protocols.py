"""The benchmark's protocols and defaults, in one place.

`keras_uncertainty.experiments.uci` trains with these defaults and
`keras-uncertainty uci` offers them as flags; the methods, their names and
their settings are the registry's (`keras_uncertainty.experiments.registry`).
This module imports neither Keras nor TensorFlow, so the command line reads
it before TensorFlow loads.
"""

from keras_uncertainty.datasets.names import UCI_DATASETS  # noqa: F401 (re-exported)
from keras_uncertainty.experiments import registry

# The `uci` command's methods, in the order they run and are reported: the
# registry's (`registry.names("uci")`).
METHODS = registry.names(registry.UCI)
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
# (the registry's); the deterministic baseline runs after them.
MNIST_METHODS = registry.names(registry.MNIST)
MNIST_BASELINE = registry.baseline(registry.MNIST)

# The published UCI results: (RMSE, its spread, NLL, its spread) per data set
# and method. MC dropout and Deep Ensembles from ../shared/data/README.md (MC
# dropout's spread is the standard error, Deep Ensembles' the standard
# deviation); VI (Graves 2011) and PBP as Hernandez-Lobato & Adams (2015)
# reported them and Gal & Ghahramani (2016, Table 1, v6) reprint them, with
# standard errors and the NLL as minus their test log-likelihood.
PUBLISHED = {
    "bostonHousing": {
        "mc-dropout": (2.90, 0.18, 2.40, 0.04),
        "ensemble": (3.28, 1.00, 2.41, 0.25),
        "vi": (4.32, 0.29, 2.9, 0.07),
        "pbp": (3.01, 0.18, 2.57, 0.09),
    },
    "concrete": {
        "mc-dropout": (4.82, 0.16, 2.93, 0.02),
        "ensemble": (6.03, 0.58, 3.06, 0.18),
        "vi": (7.19, 0.12, 3.39, 0.02),
        "pbp": (5.67, 0.09, 3.16, 0.02),
    },
    "energy": {
        "mc-dropout": (0.54, 0.06, 1.21, 0.01),
        "ensemble": (2.09, 0.29, 1.38, 0.22),
        "vi": (2.65, 0.08, 2.39, 0.03),
        "pbp": (1.8, 0.05, 2.04, 0.02),
    },
    "naval-propulsion-plant": {
        "mc-dropout": (0.00, 0.00, -4.45, 0.00),
        "ensemble": (0.00, 0.00, -5.63, 0.05),
        "vi": (0.01, 0.0, -3.73, 0.12),
        "pbp": (0.01, 0.0, -3.73, 0.01),
    },
    "protein-tertiary-structure": {
        "mc-dropout": (4.27, 0.02, 2.87, 0.00),
        "ensemble": (4.71, 0.06, 2.83, 0.02),
        "vi": (4.84, 0.03, 2.99, 0.01),
        "pbp": (4.73, 0.01, 2.97, 0.0),
    },
    "wine-quality-red": {
        "mc-dropout": (0.62, 0.01, 0.93, 0.01),
        "ensemble": (0.64, 0.04, 0.94, 0.12),
        "vi": (0.65, 0.01, 0.98, 0.01),
        "pbp": (0.64, 0.01, 0.97, 0.01),
    },
    "yacht": {
        "mc-dropout": (0.67, 0.05, 1.25, 0.01),
        "ensemble": (1.58, 0.48, 1.18, 0.21),
        "vi": (6.89, 0.67, 3.43, 0.16),
        "pbp": (1.02, 0.05, 1.63, 0.02),
    },
}

# How the UCI variance heads train (`uci.variance_loss`, `uci.variance_head`):
# "faithful" (Stirn et al. 2023, `ku.losses.GaussianNLL`'s default, with a
# `ku.layers.GaussianHead` where the network ends in one), "beta-nll" (beta
# 0.5) or "nll" (plain); chosen on validation splits cut from the training
# rows (the benchmarks page's "Variance heads" table). The published
# protocol's method has no variance head; its value keeps the plain NLL.
VARIANCE_OBJECTIVES = ("faithful", "beta-nll", "nll")
VARIANCE_OBJECTIVE = "faithful"

DEFAULT_PROTOCOL = "default"
# `uci --protocol NAME`: its epochs multiplier, Adam step, and the methods it
# runs (None: every method).
PROTOCOLS = {
    DEFAULT_PROTOCOL: {
        "epochs_multiplier": EPOCHS_MULTIPLIER,
        "learning_rate": LEARNING_RATE,
        "schedule": SCHEDULE,
        "variance_objective": VARIANCE_OBJECTIVE,
        "methods": None,
    },
    "published": {
        "epochs_multiplier": PUBLISHED_EPOCHS_MULTIPLIER,
        "learning_rate": PUBLISHED_LEARNING_RATE,
        "schedule": PUBLISHED_SCHEDULE,
        "variance_objective": "nll",
        "methods": PUBLISHED_METHODS,
    },
}

# The sources of the methods' settings (`settings` of each registry entry);
# "ours": chosen here, with its reason in the entry or the benchmarks page.
SOURCES = {
    "[A]": "the MNIST epistemic-uncertainty article this toolkit reproduces",
    "[A 2020]": "Amini et al. 2020, Deep Evidential Regression",
    "[B 2015]": "Blundell et al. 2015, Weight Uncertainty in Neural Networks",
    "[D 2021]": "Daxberger et al. 2021, Laplace Redux",
    "[G&G 2016]": "Gal & Ghahramani 2016, Dropout as a Bayesian Approximation",
    "[H 2021]": "Havasi et al. 2021, Training independent subnetworks (MIMO)",
    "[K&G 2017]": "Kendall & Gal 2017, What Uncertainties Do We Need",
    "[L 2017]": "Lakshminarayanan et al. 2017, Deep Ensembles",
    "[L 2020]": "Liu et al. 2020, SNGP",
    "[M 2019]": "Maddox et al. 2019, SWAG",
    "[S 2018]": "Sensoy et al. 2018, Evidential Deep Learning",
    "[S 2022]": (
        "Seitzer et al. 2022, On the Pitfalls of Heteroscedastic Uncertainty "
        "Estimation"
    ),
    "[S 2023]": (
        "Stirn et al. 2023, Faithful Heteroscedastic Regression with Neural "
        "Networks"
    ),
    "[W 2018]": "Wen et al. 2018, Flipout",
    "[W 2020]": "Wen et al. 2020, BatchEnsemble",
}


def settings_table(methods, protocol):
    """The defaults table of `methods` under `protocol` as Markdown rows:
    method, setting, value, source.

    Args:
        methods: `{name: method}` of registry entries (`registry.methods`).
        protocol: `"uci"` or `"mnist"`.

    Returns:
        The table's text.
    """
    rows = ["| method | setting | default | source |", "| --- | --- | --- | --- |"]
    for name, method in methods.items():
        for k, (setting, value, source) in enumerate(method.settings[protocol]):
            rows.append(
                f"| {f'`{name}`' if k == 0 else ''} | {setting} | {value} | {source} |"
            )
    return "\n".join(rows)
