"""keras_fcn: Fully Convolutional Networks for semantic segmentation (Long, Shelhamer & Darrell).

`import keras_fcn` is light: it loads no TensorFlow, and each public name below is imported on first use
(`keras_fcn.fcn8s`, `from keras_fcn import train`). The package's Keras objects (layers, metrics, loss,
optimizer) are registered as soon as Keras itself is imported, before or after this package, so that
`keras.saving.load_model("model.keras")` finds them after `import keras_fcn`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "VARIANTS": "keras_fcn.variants",
    "BilinearUpsampling": "keras_fcn.layers",
    "CaffePreprocessing": "keras_fcn.layers",
    "CropToReference": "keras_fcn.layers",
    "PadToMultiple": "keras_fcn.layers",
    "GEMMConv2D": "keras_fcn.gemm_conv",
    "build_fcn": "keras_fcn.models",
    "fcn8s": "keras_fcn.models",
    "fcn8s_at_once": "keras_fcn.models",
    "fcn16s": "keras_fcn.models",
    "fcn32s": "keras_fcn.models",
    "convolutionalize": "keras_fcn.fully_convolutional",
    "load_backbone_weights": "keras_fcn.weights",
    "transfer_weights": "keras_fcn.weights",
    "CaffeModelError": "keras_fcn.caffe",
    "load_caffemodel": "keras_fcn.caffe",
    "FrequencyWeightedIU": "keras_fcn.metrics",
    "MeanAccuracy": "keras_fcn.metrics",
    "MeanIU": "keras_fcn.metrics",
    "PixelAccuracy": "keras_fcn.metrics",
    "SegmentationLoss": "keras_fcn.metrics",
    "SegmentationScores": "keras_fcn.metrics",
    "segmentation_metrics": "keras_fcn.metrics",
    "CaffeSGD": "keras_fcn.optimizers",
    "TrainConfig": "keras_fcn.config",
    "TrainResult": "keras_fcn.training",
    "train": "keras_fcn.training",
    "evaluate": "keras_fcn.evaluation",
    "predict_files": "keras_fcn.predict",
    "predict_masks": "keras_fcn.predict",
    "with_precision": "keras_fcn.precision",
    "export_saved_model": "keras_fcn.export",
    # keras-hub's shape and presets (the `hub` extra)
    "FCNBackbone": "keras_fcn.hub",
    "FCNImageConverter": "keras_fcn.hub",
    "FCNImageSegmenter": "keras_fcn.hub",
    "FCNImageSegmenterPreprocessor": "keras_fcn.hub",
    "load_preset": "keras_fcn.presets",
    "preset_path": "keras_fcn.presets",
}
# Subpackages reachable as attributes (`keras_fcn.data.voc(...)`).
_SUBMODULES = ("data", "metrics", "serving")
# Modules whose import registers Keras objects (`keras.saving.register_keras_serializable`).
_REGISTERING = ("keras_fcn.layers", "keras_fcn.gemm_conv", "keras_fcn.metrics", "keras_fcn.optimizers")
# Registered once keras-hub itself is imported (by whoever imports it), so that
# `keras_hub.models.ImageSegmenter.from_preset(dir)` finds the FCN classes; keras-hub is optional.
_REGISTERING_WITH_HUB = ("keras_fcn.hub",)

__all__ = sorted([*_EXPORTS, *_SUBMODULES, "register_keras_objects"])


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def register_keras_objects() -> None:
    """Registers the package's Keras objects (layers, metrics, loss, optimizer; with keras-hub imported, the
    `FCNImageSegmenter` classes too) with Keras.

    `import keras_fcn` arranges this by itself: at once when Keras is already imported, else as soon as Keras
    is (whoever imports it: the user, TensorFlow's `tf.keras`, a library). Calling it again costs nothing; it
    is public for code that wants the registration stated, and it imports TensorFlow and Keras.

    Example:

    >>> import keras, keras_fcn
    >>> keras_fcn.register_keras_objects()
    >>> keras.saving.get_registered_object("keras_fcn>CaffePreprocessing").__name__
    'CaffePreprocessing'
    """
    for module in _REGISTERING:
        importlib.import_module(module)
    if _fully_imported("keras_hub"):
        _register_hub_objects()


def _register_hub_objects() -> None:
    for module in _REGISTERING_WITH_HUB:
        importlib.import_module(module)


def _register_hub_objects_after_import() -> None:
    """The hook's registration: a failure must not break the user's `import keras_hub`, so it is a warning."""
    try:
        _register_hub_objects()
    except Exception as error:  # noqa: BLE001 - whatever it is, keras-hub itself imported fine
        import warnings

        warnings.warn(f"keras_fcn could not register its keras-hub classes: {error!r}", stacklevel=2)


def _fully_imported(name: str) -> bool:
    module = sys.modules.get(name)
    return module is not None and not getattr(getattr(module, "__spec__", None), "_initializing", False)


class _RegisterAfterKeras(importlib.abc.Loader):
    """Runs a module's own loader (Keras's, keras-hub's), then registers this package's objects."""

    def __init__(self, loader, hook: _KerasImportHook):
        self._loader = loader
        self._hook = hook

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        self._hook.remove()
        self._hook.register()

    def __getattr__(self, name):  # resource readers and the like: Keras's loader's own
        return getattr(self._loader, name)


class _KerasImportHook(importlib.abc.MetaPathFinder):
    """Stays first on `sys.meta_path` until Keras (or `name`) is executed, then calls `register`.

    It must outlive look-ups that import nothing: TensorFlow's own import asks
    `importlib.util.find_spec("keras")` several times without importing Keras, so a hook that retired at
    the first look-up never saw the import that followed.
    """

    def __init__(self, name: str = "keras", register=register_keras_objects):
        self.name = name
        self.register = register

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        # The spec the other finders give (this one left out, so the search does not come back here).
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and not isinstance(spec.loader, _RegisterAfterKeras):
            spec.loader = _RegisterAfterKeras(spec.loader, self)
        return spec

    def remove(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)


def _hooked(name: str) -> bool:
    return any(isinstance(finder, _KerasImportHook) and finder.name == name for finder in sys.meta_path)


if "keras" in sys.modules:
    register_keras_objects()
elif not _hooked("keras"):
    sys.meta_path.insert(0, _KerasImportHook())
if _fully_imported("keras_hub"):
    _register_hub_objects()
elif not _hooked("keras_hub"):
    sys.meta_path.insert(0, _KerasImportHook("keras_hub", _register_hub_objects_after_import))
