"""Speed of sampling variational layers: ku.predict_regression on a Flipout MLP.

Run: python benchmarks/variational.py [--repeats 15] [--output FILE]

Every figure is the median wall time of `--repeats` runs after one warm-up
(which pays for tracing), all in one process so that the ratios compare like
with like on a shared, noisy machine; the variants are timed in rounds, in
shuffled order (the slow eager loop in a block of its own).

The network: 8 inputs, a hidden layer of 50 (ReLU), 2 outputs (mean and
log-variance), N=1000 inputs, T=100 samples. Columns:

- flipout: `ku.predict_regression` on the MLP built of `ku.layers.DenseFlipout`
  (each of the T samples of an input has its own weight perturbation);
- flipout_narrow: the same with `DenseFlipout(..., sampling_signs="narrow")`
  (in sampling calls, signs on the narrower side of each kernel only);
- reparameterization: the same with `ku.layers.DenseReparameterization`
  (local reparameterization);
- mc_dropout: `ku.predict_regression` on the same MLP with MC dropout
  (`ku.models.mlp(8, 2, hidden_units=(50,), dropout_rate=0.1)`);
- loop: the way TensorFlow Probability users sample, T eager calls of the
  Flipout model in a Python loop, the moments combined in numpy;
- compiled_loop: the same loop over a `tf.function` of the model (one graph
  call per sample).

Targets (issue 23): flipout / mc_dropout at most 3, loop / flipout at least 10.
"""

import json

import keras
import numpy as np
import tensorflow as tf
from _timing import benchmark_main, timed_rounds

import keras_uncertainty as ku
from keras_uncertainty.models import mlp

N, T = 1000, 100


def variational_mlp(layer_class, n_train=1000, **kwargs):
    inputs = keras.Input((8,))
    h = layer_class(50, activation="relu", kl_weight=1 / n_train, **kwargs)(inputs)
    outputs = layer_class(2, kl_weight=1 / n_train, **kwargs)(h)
    return keras.Model(inputs, outputs, name=layer_class.__name__)


def loop_regression(call, x, num_samples):
    """T calls in a Python loop, mixture moments in numpy."""
    outs = np.stack([np.asarray(call(x)) for _ in range(num_samples)])
    mu, var = outs[..., :1], np.exp(outs[..., 1:])
    mean = mu.mean(0)
    return mean, np.sqrt((var + mu**2).mean(0) - mean**2)


def run(repeats):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 8)).astype("float32")
    flipout = variational_mlp(ku.layers.DenseFlipout)
    narrow = variational_mlp(ku.layers.DenseFlipout, sampling_signs="narrow")
    reparameterization = variational_mlp(ku.layers.DenseReparameterization)
    dropout = mlp(8, 2, hidden_units=(50,), dropout_rate=0.1)
    compiled = tf.function(lambda batch: flipout(batch, training=False))
    x_tensor = tf.constant(x)

    def predict(model):
        return lambda: ku.predict_regression(model, x, T, variance_head=True)

    seconds = {
        **timed_rounds(
            max(3, repeats // 3),
            loop=lambda: loop_regression(flipout, x_tensor, T),
            compiled_loop=lambda: loop_regression(compiled, x_tensor, T),
        ),
        **timed_rounds(
            repeats,
            flipout=predict(flipout),
            flipout_narrow=predict(narrow),
            reparameterization=predict(reparameterization),
            mc_dropout=predict(dropout),
        ),
    }
    row = {"case": "mlp_8_50_2", "N": N, "T": T}
    row.update({f"{name}_s": value for name, value in seconds.items()})
    row["flipout_over_mc_dropout"] = seconds["flipout"] / seconds["mc_dropout"]
    row["flipout_narrow_over_mc_dropout"] = (
        seconds["flipout_narrow"] / seconds["mc_dropout"]
    )
    row["reparameterization_over_mc_dropout"] = (
        seconds["reparameterization"] / seconds["mc_dropout"]
    )
    row["loop_over_flipout"] = seconds["loop"] / seconds["flipout"]
    row["compiled_loop_over_flipout"] = seconds["compiled_loop"] / seconds["flipout"]
    row["targets_met"] = bool(
        row["flipout_over_mc_dropout"] <= 3 and row["loop_over_flipout"] >= 10
    )
    print(json.dumps(row), flush=True)
    return [row]


def markdown(rows):
    lines = [
        "| case | N | T | flipout | flipout narrow | reparam. | MC dropout | loop "
        "| compiled loop | flipout / MC dropout (<= 3) | narrow / MC dropout "
        "| reparam. / MC dropout | loop / flipout (>= 10) "
        "| compiled loop / flipout |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['N']} | {r['T']} | {r['flipout_s'] * 1e3:.1f} ms "
            f"| {r['flipout_narrow_s'] * 1e3:.1f} ms "
            f"| {r['reparameterization_s'] * 1e3:.1f} ms "
            f"| {r['mc_dropout_s'] * 1e3:.1f} ms | {r['loop_s'] * 1e3:.0f} ms "
            f"| {r['compiled_loop_s'] * 1e3:.0f} ms "
            f"| {r['flipout_over_mc_dropout']:.2f}x "
            f"| {r['flipout_narrow_over_mc_dropout']:.2f}x "
            f"| {r['reparameterization_over_mc_dropout']:.2f}x "
            f"| {r['loop_over_flipout']:.1f}x "
            f"| {r['compiled_loop_over_flipout']:.1f}x |"
        )
    return "\n".join(lines)


def main():
    benchmark_main(__doc__, "variational", run, markdown)


if __name__ == "__main__":
    main()
