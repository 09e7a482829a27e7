"""The names of the data sets the package knows, by folder name.

Imports nothing (no numpy, Keras or TensorFlow): the command line checks its
`DATASET` arguments against these names before TensorFlow loads, and the
benchmark protocols (`keras_uncertainty.experiments`) take them from here.
"""

# The UCI regression benchmark of the MC dropout and Deep Ensembles papers
# (`ku.datasets.load_uci`; `sha256.json` holds their files' checksums).
UCI_DATASETS = (
    "bostonHousing",
    "concrete",
    "energy",
    "naval-propulsion-plant",
    "protein-tertiary-structure",
    "wine-quality-red",
    "yacht",
)
