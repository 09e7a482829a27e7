"""`SNGPCovarianceReset`: the SNGP covariance over the last epoch only."""

import keras

from keras_uncertainty.sngp.model import gaussian_process_layers


class SNGPCovarianceReset(keras.callbacks.Callback):
    """Resets the SNGP posterior precision at the start of every epoch.

    A `ku.layers.RandomFeatureGaussianProcess` with exact accumulation
    (`gp_cov_momentum < 0`) adds every training batch to its precision
    `Sigma^-1 = ridge * I + sum_i w_i phi_i phi_i^T`. Liu et al. (2020)
    compute it over one pass of the data with the final features: this
    callback resets it to `ridge * I` at every `on_epoch_begin`, so after
    `fit` it holds the last epoch's batches (and the covariance is computed
    from them on the first prediction). Without it the precision sums every
    epoch since the layer was built, with features that changed on the
    way, and the predictive variance is too small. Moving-average layers
    (`0 < gp_cov_momentum < 1`) are reset too, as edward2 does.

    Every `RandomFeatureGaussianProcess` in the model, at any depth, is
    reset; a model without one raises `ValueError` when training begins.

    Example:

    >>> model.fit(x, y, epochs=10, callbacks=[SNGPCovarianceReset()])
    """

    def gaussian_process_layers(self):
        """The `RandomFeatureGaussianProcess` layers of the model trained."""
        layers = gaussian_process_layers(self.model)
        if not layers:
            raise ValueError(
                "Invalid value received for argument `model`. Expected a model "
                "with a ku.layers.RandomFeatureGaussianProcess layer for "
                f"SNGPCovarianceReset. Received: model '{self.model.name}' "
                "without one"
            )
        return layers

    def on_train_begin(self, logs=None):
        self.gaussian_process_layers()

    def on_epoch_begin(self, epoch, logs=None):
        for layer in self.gaussian_process_layers():
            layer.reset_covariance()
