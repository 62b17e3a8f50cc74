"""keras_fcn: Fully Convolutional Networks for semantic segmentation (Long, Shelhamer & Darrell)."""

__version__ = "0.1.0"
