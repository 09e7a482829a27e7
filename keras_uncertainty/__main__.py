import sys

from keras_uncertainty.cli.main import main

sys.exit(main())
