"""Reference architectures of the experiments this toolkit reproduces.

Each builder returns an uncompiled `keras.Model` with MC layers, so that
`ku.predict_*` samples it directly.
"""

import keras

from keras_uncertainty._validation import check_rate
from keras_uncertainty.layers import MCDropout, MCSpatialDropout2D


def mlp(
    num_inputs,
    num_outputs,
    hidden_units=(50,),
    dropout_rate=0.1,
    input_dropout=True,
    activation="relu",
    output_activation=None,
    name="mlp",
):
    """Fully connected network with MC dropout before each Dense layer.

    Args:
        num_inputs: Number of input features.
        num_outputs: Width of the output layer (2k for a Gaussian NLL head on
            k targets, C for C classes).
        hidden_units: Sizes of the hidden layers.
        dropout_rate: Rate of every `MCDropout`; 0 builds no dropout layer.
        input_dropout: Whether to drop inputs too (the MC dropout protocol of
            Gal & Ghahramani's UCI experiments does).
        activation: Hidden activation.
        output_activation: Output activation (`"softmax"` for a classifier).
        name: Model name.
    """
    inputs = keras.Input((num_inputs,))
    x = inputs
    for i, units in enumerate(hidden_units):
        if dropout_rate and (i or input_dropout):
            x = MCDropout(dropout_rate)(x)
        x = keras.layers.Dense(units, activation=activation)(x)
    if dropout_rate:
        x = MCDropout(dropout_rate)(x)
    outputs = keras.layers.Dense(num_outputs, activation=output_activation)(x)
    return keras.Model(inputs, outputs, name=name)


def article_regression_mlp(num_inputs=1, dropout_rate=0.1):
    """The regression network of the "why uncertainty matters" article.

    Dense(20, relu), Dense(20, relu), Dense(2): a mean and a log-variance for
    one target, with MC dropout after each hidden layer; train it with
    `ku.losses.gaussian_nll`.
    """
    inputs = keras.Input((num_inputs,))
    x = keras.layers.Dense(20, activation="relu")(inputs)
    x = MCDropout(dropout_rate)(x)
    x = keras.layers.Dense(20, activation="relu")(x)
    x = MCDropout(dropout_rate)(x)
    outputs = keras.layers.Dense(2)(x)
    return keras.Model(inputs, outputs, name="article_regression_mlp")


def lenet5(input_shape=(32, 32, 1), num_classes=10, dropout_rate=0.5):
    """LeNet-5 with whole-channel MC dropout after both convolutions.

    The network of the MNIST epistemic-uncertainty article: Conv 6@5x5 tanh,
    2D dropout, average pool 2; Conv 16@5x5 tanh, 2D dropout, average pool 2;
    Dense 120 tanh, Dense 84 tanh, Dense `num_classes` softmax. With
    `dropout_rate=0` the dropout layers are left out: a deterministic
    network (an ensemble member, or the softmax-entropy baseline).
    """
    check_rate(dropout_rate)

    def dropout():
        return [MCSpatialDropout2D(dropout_rate)] if dropout_rate else []

    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(6, 5, activation="tanh"),
            *dropout(),
            keras.layers.AveragePooling2D(2),
            keras.layers.Conv2D(16, 5, activation="tanh"),
            *dropout(),
            keras.layers.AveragePooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(120, activation="tanh"),
            keras.layers.Dense(84, activation="tanh"),
            keras.layers.Dense(num_classes, activation="softmax"),
        ],
        name="lenet5",
    )
