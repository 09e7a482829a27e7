"""The command line; it lives in the top-level module `keras_uncertainty_cli`
so that arguments are parsed before TensorFlow is imported."""

from keras_uncertainty_cli import build_parser, main, run_demo

__all__ = ["build_parser", "main", "run_demo"]
