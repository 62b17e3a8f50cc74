"""`python -m keras_fcn.cli VERB ...`, the same as `keras-fcn VERB ...`."""

import sys

from keras_fcn.cli import main

sys.exit(main())
