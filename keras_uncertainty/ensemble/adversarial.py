"""Adversarial training with the fast gradient sign method (Goodfellow et al.
2015), as the Deep Ensembles paper uses it: each network also trains on its
own worst-case nudge of the batch."""

import math
import numbers

import numpy as np
import tensorflow as tf
from keras import ops


def check_epsilon(value, name="adversarial_epsilon"):
    """None, or a positive finite float."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected None or "
            "a positive float (a fraction of each input feature's range). "
            f"Received: {name}={value!r}"
        )
    return float(value)


def feature_range_step(x, epsilon):
    """`epsilon * (max - min)` of each input feature over the rows of `x`:
    the paper's step, 1% of each feature's range for epsilon = 0.01."""
    return (epsilon * np.ptp(np.asarray(x), axis=0)).astype("float32")


def fast_gradient_sign_losses(forward, member_losses, inputs, step):
    """Each member's loss on its own fast-gradient-sign perturbation.

    `x_adv = x + step * sign(grad_x loss(x))`, computed per member: `inputs`
    hold one copy of the batch per member (a member axis), and since a
    member's loss depends only on its own copy, one gradient of the summed
    losses gives every member its own direction.

    Args:
        forward: Callable mapping `inputs` to the members' predictions.
        member_losses: Callable mapping predictions to a `(M,)` tensor of
            the members' losses.
        inputs: Tensor with a member axis, one copy of the batch per member.
        step: Tensor broadcastable to `inputs`, the step of each feature.

    Returns:
        `(clean, perturbed)`: the members' losses on `inputs` and on their
        perturbed copies, both differentiable with respect to the weights.
    """
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        clean = member_losses(forward(inputs))
        total = ops.sum(clean)
    direction = ops.sign(tape.gradient(total, inputs))
    perturbed = tf.stop_gradient(inputs + ops.cast(step, inputs.dtype) * direction)
    return clean, member_losses(forward(perturbed))
