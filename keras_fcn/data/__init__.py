"""Data for training and evaluation: sources of (image, mask) pairs and the tf.data pipeline.

Sources yield `(image uint8 (H, W, 3), mask uint8 (H, W))` with 255 meaning "ignore":
`voc`, `sbd`, `folder`, `tfds`, `synthetic` (the built-in default), or `from_spec("kind:location")`.
`make_dataset(source, batch_size, crop_size, ...)` turns one into augmented, batched tensors.
"""

from keras_fcn.data.files import IGNORE_LABEL, DataError, check_mask, read_image, read_mask
from keras_fcn.data.pipeline import MEAN_RGB, augment, data_errors, make_dataset
from keras_fcn.data.sources import VOC_CLASSES, FileSource, IndexedSource, Source, folder, sbd, voc, without
from keras_fcn.data.spec import from_spec
from keras_fcn.data.synthetic import SyntheticShapes, synthetic
from keras_fcn.data.tfds_source import PET_TRIMAP, TFDSSource, tfds

__all__ = [
    "IGNORE_LABEL",
    "MEAN_RGB",
    "PET_TRIMAP",
    "VOC_CLASSES",
    "DataError",
    "FileSource",
    "IndexedSource",
    "Source",
    "SyntheticShapes",
    "TFDSSource",
    "augment",
    "check_mask",
    "data_errors",
    "folder",
    "from_spec",
    "make_dataset",
    "read_image",
    "read_mask",
    "sbd",
    "synthetic",
    "tfds",
    "voc",
    "without",
]
