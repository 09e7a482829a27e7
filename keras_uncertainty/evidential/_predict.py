"""Runs an evidential reducer through the sampling engine in one pass."""

from keras import tree

from keras_uncertainty.sampling import reduce_samples, sampled_model


def output_width(model):
    """The last dimension of the model's (single) output, or None."""
    view = sampled_model(model).input_view
    if view is None:
        return None
    flat = tree.flatten(view.output)
    if len(flat) != 1:
        raise ValueError(
            "Invalid value received for argument `model`. Expected a model "
            f"with one output (the evidential head). Received: {len(flat)} "
            "outputs"
        )
    return flat[0].shape[-1]


def run(model, x, reducer, num_samples, batch_size, seed, verbose, max_rows_per_call):
    # The evidential reducers declare `uncertainty_in_output`, so the engine
    # does not warn that a model without stochastic layers has identical
    # samples.
    return reduce_samples(
        model,
        x,
        reducer,
        num_samples=num_samples,
        batch_size=batch_size,
        seed=seed,
        verbose=verbose,
        max_rows_per_call=max_rows_per_call,
    )
