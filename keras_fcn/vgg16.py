"""The facts of VGG16 and its Caffe-trained weights, free of TensorFlow: block layout, widths, mean pixel.

`backbone` builds the layers from these; the data pipeline pads with the mean pixel the model subtracts;
the weight readers check files against the layout.
"""

from __future__ import annotations

# Filters of the five convolutional blocks, and convolutions per block.
VGG16_FILTERS = (64, 128, 256, 512, 512)
VGG16_BLOCK_DEPTHS = (2, 2, 3, 3, 3)
# Width of fc6/fc7 (the classifier's fc1/fc2).
VGG16_FC_UNITS = 4096
# Keras's layer names of the thirteen convolutions: block1_conv1 ... block5_conv3.
VGG16_CONV_LAYERS = tuple(
    f"block{block}_conv{conv}"
    for block, depth in enumerate(VGG16_BLOCK_DEPTHS, start=1)
    for conv in range(1, depth + 1)
)

# The means of Keras's "caffe" preprocessing (`keras.applications.vgg16.preprocess_input`), in BGR order:
# Keras's VGG16 weights were converted from Caffe with these.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
# The mean pixel the reference's FCNs were trained with (shelhamer/fcn.berkeleyvision.org, `voc_layers.py`),
# BGR: models imported from its Caffe files subtract this one.
REFERENCE_BGR_MEAN = (104.00699, 116.66877, 122.67892)
