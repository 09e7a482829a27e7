"""Small data sets for demos and tests (no download needed)."""

import numpy as np


def toy_regression(num_points=400, gap=(-1.0, 1.0), noise=0.3, seed=0):
    """1-D heteroscedastic regression with a gap in the training inputs.

    `y = sin(3x) * x + eps`, `eps ~ N(0, (noise * (0.2 + |x|/2))^2)`, with x
    uniform on [-3, 3] except the interval `gap`: the noise (aleatoric) grows
    with |x|, and the model has no data in the gap (epistemic).

    Args:
        num_points: How many points.
        gap: `(low, high)`, the interval of x without training points, or
            None for none.
        noise: The noise scale.
        seed: Seed of the draw.

    Returns:
        `(x, y)`, float32 arrays of shape `(num_points, 1)`.
    """
    rng = np.random.default_rng(seed)
    x = rng.uniform(-3.0, 3.0, size=4 * num_points)
    if gap is not None:
        x = x[(x < gap[0]) | (x > gap[1])]
    x = x[:num_points]
    scale = noise * (0.2 + 0.5 * np.abs(x))
    y = np.sin(3.0 * x) * x + scale * rng.normal(size=x.shape)
    return x[:, None].astype("float32"), y[:, None].astype("float32")
