"""`python -m keras_uncertainty`: the `keras-uncertainty` command."""

import sys

from keras_uncertainty.cli.main import main

sys.exit(main())
