"""The `keras-uncertainty` command line."""
