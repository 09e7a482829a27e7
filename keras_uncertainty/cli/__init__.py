"""The `keras-uncertainty` command line.

`main` parses and checks the arguments before TensorFlow loads; `uci` and
`mnist` hold the commands it then runs. See `keras_uncertainty.cli.main`.
"""
