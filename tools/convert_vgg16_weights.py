"""Convert Keras's VGG16 ImageNet weights into FCN weights.

    python tools/convert_vgg16_weights.py \\
        --input ~/.keras/models/vgg16_weights_tf_dim_ordering_tf_kernels.h5 \\
        --output vgg16_fcn.weights.h5

The same as `keras-fcn convert --input ...`: the mapping lives in `keras_fcn.convert`; this script only
parses flags. It prints the largest absolute difference between the source classifier and the converted
network on a probe image (0 up to float32 rounding).
"""

import argparse
import sys

from keras_fcn.convert import convert_vgg16_weights

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="Keras VGG16 weights with top, legacy .h5 layout")
    parser.add_argument("--output", required=True, help="FCN weight file to write, ending in .weights.h5")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or report")
    args = parser.parse_args()
    try:
        convert_vgg16_weights(args.input, args.output, force=args.force, verbose=not args.quiet)
    except (ValueError, OSError) as error:  # WeightFileError is a ValueError, FileExistsError an OSError
        print(f"convert_vgg16_weights: error: {error}", file=sys.stderr)
        sys.exit(2)
