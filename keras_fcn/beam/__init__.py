"""Batch segmentation with Apache Beam's RunInference over an exported SavedModel (`pip install "keras_fcn[beam]"`).

`SavedModelHandler` is a `ModelHandler` for `RunInference`; `segment_files` adds the whole batch-predict
pipeline (what `keras-fcn batch-predict` runs) to a Beam pipeline.
"""

from keras_fcn.beam.handler import ImageExample, InferenceError, SavedModelHandler
from keras_fcn.beam.pipeline import DEAD_LETTER, MANIFEST, absolute_path, counts, resolve_model_dir, segment_files

__all__ = ["DEAD_LETTER", "MANIFEST", "ImageExample", "InferenceError", "SavedModelHandler", "absolute_path",
           "counts", "resolve_model_dir", "segment_files"]  # fmt: skip
