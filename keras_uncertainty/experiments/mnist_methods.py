"""The methods of the MNIST benchmark: the registry's, by name.

`METHODS` maps the `mnist` command's names (and the deterministic baseline,
last) to their entries of `keras_uncertainty.experiments.registry`, where
each method declares its settings and how it builds (`mnist_build`), trains
(`mnist_fit`) and predicts (`mnist_predict`); kept for the scripts that read
the methods' labels by this name.
"""

from keras_uncertainty.experiments import registry
from keras_uncertainty.experiments.registry import lenet_layers  # noqa: F401

# The `mnist` command's methods, in the order they run, then the baseline.
METHODS = registry.methods(registry.MNIST, baseline=True)
