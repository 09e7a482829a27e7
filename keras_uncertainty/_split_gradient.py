"""The faithful heads' product: some output columns blind to the layers below.

A faithful head (Stirn et al. 2023) computes its mean columns from its inputs
and its variance (or evidence) columns from the same inputs with their
gradient stopped, so the variance's loss trains only its own weights. The
Gaussian heads (`ku.layers.GaussianHead`, its packed and BatchEnsemble twins),
the evidential `NormalInverseGammaHead` and the UCI protocol's BatchEnsembles
on the split axis all compute it here.
"""

from keras import ops


def stop_gradient_after(first_stopped, product, kernel, *inputs):
    """`product(*inputs, kernel)`, its columns from `first_stopped` on
    computed from `inputs` with their gradient stopped.

    Args:
        first_stopped: The first column whose inputs' gradient is stopped;
            None: no column's (`product(*inputs, kernel)` unchanged).
        product: `product(*inputs, kernel_columns)`, linear in the kernel's
            columns (last axis), e.g. `ops.matmul`.
        kernel: The weights whose last axis are the output columns.
        *inputs: The tensors `product` reads besides the kernel.

    Returns:
        The product's `[..., :first_stopped]` columns from `inputs` and its
        `[..., first_stopped:]` columns from `ops.stop_gradient(inputs)`,
        concatenated on the last axis.
    """
    if first_stopped is None:
        return product(*inputs, kernel)
    free = product(*inputs, kernel[..., :first_stopped])
    stopped = [ops.stop_gradient(x) for x in inputs]
    blind = product(*stopped, kernel[..., first_stopped:])
    return ops.concatenate([free, blind], axis=-1)
