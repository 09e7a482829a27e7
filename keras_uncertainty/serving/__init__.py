"""Serving predictive uncertainty: SavedModels whose signature returns it."""

from keras_uncertainty.serving.export import export

__all__ = ["export"]
