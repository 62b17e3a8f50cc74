"""keras_fcn: Fully Convolutional Networks for semantic segmentation (Long, Shelhamer & Darrell).

Importing the package registers its Keras layers, so `keras.saving.load_model("model.keras")` works.
"""

__version__ = "0.1.0"

from keras_fcn.caffe import CaffeModelError, load_caffemodel
from keras_fcn.convolutionalize import convolutionalize
from keras_fcn.export import export_saved_model
from keras_fcn.layers import BilinearUpsampling, CaffePreprocessing, CropToReference, PadToMultiple
from keras_fcn.models import VARIANTS, build_fcn, fcn8s, fcn8s_at_once, fcn16s, fcn32s
from keras_fcn.weights import load_backbone_weights, transfer_weights

__all__ = [
    "VARIANTS",
    "BilinearUpsampling",
    "CaffeModelError",
    "CaffePreprocessing",
    "CropToReference",
    "PadToMultiple",
    "build_fcn",
    "convolutionalize",
    "export_saved_model",
    "fcn8s",
    "fcn8s_at_once",
    "fcn16s",
    "fcn32s",
    "load_backbone_weights",
    "load_caffemodel",
    "transfer_weights",
]

# Training, evaluation and prediction: keras_fcn.data (sources, tf.data pipeline) → keras_fcn.metrics →
# keras_fcn.train(...) → keras_fcn.evaluate(...) / predict.
from keras_fcn import data, metrics  # noqa: E402
from keras_fcn.config import TrainConfig  # noqa: E402
from keras_fcn.evaluate import evaluate  # noqa: E402
from keras_fcn.metrics import (  # noqa: E402
    FrequencyWeightedIU,
    MeanAccuracy,
    MeanIU,
    PixelAccuracy,
    SegmentationLoss,
    SegmentationScores,
    segmentation_metrics,
)
from keras_fcn.optimizers import CaffeSGD  # noqa: E402
from keras_fcn.predict import predict_files, predict_masks  # noqa: E402
from keras_fcn.train import TrainResult, train  # noqa: E402

__all__ += [
    "CaffeSGD",
    "FrequencyWeightedIU",
    "MeanAccuracy",
    "MeanIU",
    "PixelAccuracy",
    "SegmentationLoss",
    "SegmentationScores",
    "TrainConfig",
    "TrainResult",
    "data",
    "evaluate",
    "metrics",
    "predict_files",
    "predict_masks",
    "segmentation_metrics",
    "train",
]
