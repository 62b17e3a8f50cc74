"""Convert Keras's VGG16 ImageNet weights into FCN weights.

    python tools/convert_vgg16_weights.py \\
        --input ~/.keras/models/vgg16_weights_tf_dim_ordering_tf_kernels.h5 \\
        --output vgg16_fcn.weights.h5

The same as `keras-fcn convert`: the mapping lives in `keras_fcn.convert`; this script only parses flags.
It prints the largest absolute difference between the source classifier and the converted network on a
probe image (0 up to float32 rounding).
"""

import argparse
import sys

from keras_fcn.cli import CommandError, add_convert_arguments, run_convert

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_convert_arguments(parser)
    try:
        sys.exit(run_convert(parser.parse_args()))
    except CommandError as error:
        print(f"convert_vgg16_weights: error: {error}", file=sys.stderr)
        sys.exit(2)
