"""Half precision (`keras.mixed_precision` policies) in one place.

Under `mixed_float16` or `mixed_bfloat16` Keras layers compute in half
precision with float32 variables. The toolkit keeps float32 where half
precision breaks a method: the sampling reducers read samples in float32
(`widen`), so does the Gaussian NLL, and the layers that hold a posterior or a
covariance (SNGP's Gaussian process output, Laplace's last-layer
posterior) compute in float32 whatever the global policy, as Keras advises
for a model's output layer.
"""

import keras
from keras import ops

HALF_DTYPES = ("float16", "bfloat16")


def is_half(dtype):
    """Whether `dtype` (a name, numpy or TensorFlow dtype) is float16 or
    bfloat16."""
    return getattr(dtype, "name", str(dtype)) in HALF_DTYPES


def widen(values):
    """`values` as a tensor, in float32 when they are float16 or bfloat16
    (what a mixed-precision model outputs without a float32 last layer);
    any other dtype unchanged.

    The sampling reducers read samples through it (or cast them to float32
    themselves) before reducing, and the Gaussian NLL its predictions, so
    that no result is half precision: float16 overflows above 65504 (the
    exponential of a log-variance above about 11) and both half types round
    sums of many values.
    """
    values = ops.convert_to_tensor(values)
    if is_half(values.dtype):
        return ops.cast(values, "float32")
    return values


def _compute_dtype(dtype):
    """The compute dtype's name of a layer's `dtype` argument (a dtype, a
    `keras.DTypePolicy`, its config dict or its name)."""
    if isinstance(dtype, dict):  # a serialized policy
        dtype = dtype.get("config", {}).get("name", dtype.get("name"))
    if isinstance(dtype, str):
        return keras.mixed_precision.DTypePolicy(dtype).compute_dtype
    compute = getattr(dtype, "compute_dtype", None)
    return compute if compute is not None else getattr(dtype, "name", str(dtype))


def float32_layer_dtype(dtype, layer_class):
    """The `dtype` argument of a layer that computes in float32.

    Args:
        dtype: The `dtype` the layer was given (None, a dtype, a policy or
            its name).
        layer_class: The layer's class, named in the error.

    Returns:
        `"float32"` when `dtype` is None and the global policy computes in
        half precision (`mixed_float16`, `mixed_bfloat16`); else `dtype`
        (None: the global policy).

    Raises:
        ValueError: `dtype` computes in float16 or bfloat16.
    """
    if dtype is None:
        if is_half(keras.mixed_precision.global_policy().compute_dtype):
            return "float32"
        return None
    if is_half(_compute_dtype(dtype)):
        raise ValueError(
            "Invalid value received for argument `dtype`. Expected a float32 "
            f"(or float64) policy: {layer_class.__name__} holds a posterior "
            "whose sums and draws lose their meaning in half precision (it "
            "computes in float32 by itself under a mixed global policy; "
            f"leave `dtype` unset). Received: dtype={dtype!r}"
        )
    return dtype
