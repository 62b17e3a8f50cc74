"""keras-hub presets of FCNs: built-in names, writing a preset from a model or a `.caffemodel`, loading one.

A preset is keras-hub's folder: `config.json` (the `FCNBackbone`), `model.weights.h5`, `task.json` (the
`FCNImageSegmenter`, with its class names and palette), `task.weights.h5` (the head), `preprocessor.json` and
`image_converter.json` (the mean pixel and channel order), `metadata.json`. It loads with
`keras_fcn.FCNImageSegmenter.from_preset(...)` or `keras_hub.models.ImageSegmenter.from_preset(...)`.

`preset` may be a folder, a `kaggle://` or `hf://` handle (resolved by keras-hub), or one of `BUILTIN_PRESETS`:
the reference's published `.caffemodel`, downloaded once into Keras's file cache (`keras.utils.get_file`,
`$KERAS_HOME` or `~/.keras`) and converted once into a preset beside it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from keras_fcn.atomic import FILE_MODE

# Where built-in presets are downloaded and converted: None is Keras's cache ($KERAS_HOME or ~/.keras).
CACHE_DIR: str | None = None
CACHE_SUBDIR = os.path.join("keras_fcn", "caffemodels")
PRESETS_SUBDIR = os.path.join("keras_fcn", "presets")
_REFERENCE_URL = "http://dl.caffe.berkeleyvision.org/"


@dataclass(frozen=True)
class BuiltinPreset:
    """A built-in name: where its Caffe weights are published, their SHA-256 (None: not published), what it is."""

    url: str
    file_hash: str | None
    description: str


# The reference's `*/caffemodel-url` files (shelhamer/fcn.berkeleyvision.org) and, for VGG16, the Caffe Model
# Zoo entry its `ilsvrc-nets/README.md` links. None of them publishes a checksum: the hash is checked when
# one is set here (or passed to `preset_path`).
BUILTIN_PRESETS = {
    "fcn32s_voc": BuiltinPreset(_REFERENCE_URL + "fcn32s-heavy-pascal.caffemodel", None, "voc-fcn32s, 21 classes"),
    "fcn16s_voc": BuiltinPreset(_REFERENCE_URL + "fcn16s-heavy-pascal.caffemodel", None, "voc-fcn16s, 21 classes"),
    "fcn8s_voc": BuiltinPreset(_REFERENCE_URL + "fcn8s-heavy-pascal.caffemodel", None, "voc-fcn8s, 21 classes"),
    "fcn8s_atonce_voc": BuiltinPreset(
        _REFERENCE_URL + "fcn8s-atonce-pascal.caffemodel", None, "voc-fcn8s-atonce, 21 classes"
    ),
    "fcn32s_pascalcontext": BuiltinPreset(
        _REFERENCE_URL + "pascalcontext-fcn32s-heavy.caffemodel", None, "pascalcontext-fcn32s, 60 classes"
    ),
    "fcn16s_pascalcontext": BuiltinPreset(
        _REFERENCE_URL + "pascalcontext-fcn16s-heavy.caffemodel", None, "pascalcontext-fcn16s, 60 classes"
    ),
    "fcn8s_pascalcontext": BuiltinPreset(
        _REFERENCE_URL + "pascalcontext-fcn8s-heavy.caffemodel", None, "pascalcontext-fcn8s, 60 classes"
    ),
    # NYUDv2: the reference publishes FCN-32s only (colour, HHA, colour-HHA); the colour net imports.
    "fcn32s_nyud": BuiltinPreset(
        _REFERENCE_URL + "nyud-fcn32s-color-heavy.caffemodel", None, "nyud-fcn32s colour, 40 classes"
    ),
    "fcn32s_siftflow": BuiltinPreset(
        _REFERENCE_URL + "siftflow-fcn32s-heavy.caffemodel", None, "siftflow-fcn32s semantic head, 33 classes"
    ),
    "fcn16s_siftflow": BuiltinPreset(
        _REFERENCE_URL + "siftflow-fcn16s-heavy.caffemodel", None, "siftflow-fcn16s semantic head, 33 classes"
    ),
    "fcn8s_siftflow": BuiltinPreset(
        _REFERENCE_URL + "siftflow-fcn8s-heavy.caffemodel", None, "siftflow-fcn8s semantic head, 33 classes"
    ),
    "vgg16_ilsvrc": BuiltinPreset(
        "http://www.robots.ox.ac.uk/~vgg/software/very_deep/caffe/VGG_ILSVRC_16_layers.caffemodel",
        None,
        "VGG_ILSVRC_16_layers: an FCNBackbone preset (blocks, fc6, fc7; no head)",
    ),
}


def _keras_cache_dir(cache_dir: str | None) -> str:
    """The cache folder: `cache_dir`, else `CACHE_DIR`, else Keras's (`$KERAS_HOME` or `~/.keras`)."""
    return cache_dir or CACHE_DIR or os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")


def check_fcn_preset(local: str, preset: str, load_weights: bool = True) -> None:
    """Checks a local preset before keras-hub reads it: `config.json` must be an `FCNBackbone`'s (a ValueError
    names the class found), and the weights must be there (a FileNotFoundError names the file)."""
    import json

    config_path = os.path.join(local, "config.json")
    if "://" in local or not os.path.isfile(config_path):
        return  # a handle: keras-hub resolves it; a missing config.json: keras-hub says so
    with open(config_path, encoding="utf-8") as handle:
        registered = json.load(handle).get("registered_name")
    if registered != "keras_fcn>FCNBackbone":
        raise ValueError(
            f"Expected a keras_fcn preset (config.json of keras_fcn>FCNBackbone). Received: preset={preset!r} "
            f"holding registered_name={registered!r}"
        )
    weights = ("model.weights.h5", "model.weights.json")  # one file, or keras-hub's sharded index
    if load_weights and not any(os.path.isfile(os.path.join(local, name)) for name in weights):
        raise FileNotFoundError(f"The preset has no model.weights.h5 (nor a sharded model.weights.json). "
                                f"Received: preset={preset!r}")  # fmt: skip


def is_preset(text: str) -> bool:
    """Whether `text` names a preset rather than a model file: a built-in name, a `scheme://` handle, or a
    folder holding `config.json`."""
    text = os.fspath(text)
    return (
        text in BUILTIN_PRESETS
        or "://" in text
        or (os.path.isdir(text) and os.path.isfile(os.path.join(text, "config.json")))
    )


def preset_path(preset: str, *, cache_dir: str | None = None, file_hash: str | None = None) -> str:
    """The preset keras-hub can load: a built-in name is downloaded and converted (once); others pass through.

    Args:
        preset: a built-in name (`BUILTIN_PRESETS`), a folder, or a `kaggle://` / `hf://` handle.
        cache_dir: the cache folder (default: `CACHE_DIR`, else Keras's: `$KERAS_HOME` or `~/.keras`).
        file_hash: the `.caffemodel`'s SHA-256 (or MD5), checked by `keras.utils.get_file`; default: the
            table's.

    Returns:
        A local folder (built-in names, folders) or the handle as given.

    Raises:
        ValueError: an unknown name that is no folder, or a download whose hash does not match.
    """
    if not isinstance(preset, (str, os.PathLike)):
        raise ValueError(f"Expected a preset name, folder or handle. Received: preset={preset!r}")
    preset = os.fspath(preset)
    if preset not in BUILTIN_PRESETS:
        if "://" in preset or os.path.isdir(preset):
            return preset
        raise ValueError(
            f"Expected a preset folder, a kaggle:// or hf:// handle, or a built-in name "
            f"({', '.join(BUILTIN_PRESETS)}). Received: preset={preset!r}"
        )
    import keras

    entry = BUILTIN_PRESETS[preset]
    file_hash = file_hash or entry.file_hash
    # Keras falls back to /tmp/.keras for a cache folder it cannot write, a missing one included.
    os.makedirs(_keras_cache_dir(cache_dir), exist_ok=True)
    try:
        caffemodel = keras.utils.get_file(
            fname=os.path.basename(entry.url),
            origin=entry.url,
            file_hash=file_hash,
            cache_subdir=CACHE_SUBDIR,
            cache_dir=_keras_cache_dir(cache_dir),
        )
    except ValueError as error:  # Keras's "Incomplete or corrupted file detected"
        # Keras leaves the file in its cache; a later call without a hash must not take it.
        cached = os.path.join(_keras_cache_dir(cache_dir), CACHE_SUBDIR, os.path.basename(entry.url))
        if os.path.exists(cached):
            os.remove(cached)
        raise ValueError(
            f"The download of {entry.url} failed its hash check: {error} Received: preset={preset!r}"
        ) from None
    except Exception as error:  # noqa: BLE001 - urllib's errors come in many classes; say which file
        raise ValueError(f"Cannot download {entry.url}: {error}. Received: preset={preset!r}") from None
    cache_root = os.path.dirname(os.path.dirname(os.path.dirname(caffemodel)))
    directory = os.path.join(cache_root, PRESETS_SUBDIR, preset)
    if not os.path.isfile(os.path.join(directory, "config.json")):
        caffemodel_to_preset(caffemodel, directory, force=True, verbose=False)
    return directory


def _write_preset_atomically(preset_dir: str, write, force: bool) -> None:
    """Calls `write(tmp_dir)`, then renames the folder to `preset_dir` (replacing it only with `force`)."""
    preset_dir = os.path.abspath(preset_dir)
    if os.path.exists(preset_dir) and not force:
        raise FileExistsError(f"The preset exists; pass --force to overwrite it. Received: preset_dir={preset_dir!r}")
    parent = os.path.dirname(preset_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(preset_dir)}-", dir=parent)
    try:
        write(tmp)
        os.chmod(tmp, 0o755)
        for name in os.listdir(tmp):
            os.chmod(os.path.join(tmp, name), FILE_MODE)
        if os.path.exists(preset_dir):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(preset_dir)}-old-", dir=parent)
            os.replace(preset_dir, os.path.join(old, "preset"))
            os.replace(tmp, preset_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, preset_dir)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def _probe(num_pixels: tuple[int, int] = (37, 45)) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (1, *num_pixels, 3)).astype("uint8")


def segment(segmenter, images) -> np.ndarray:
    """The logits of an `FCNImageSegmenter` on raw RGB images: its preprocessor, then the model (one eager call;
    `predict` would trace a function for each new model)."""
    import keras

    inputs = segmenter.preprocessor(images) if segmenter.preprocessor is not None else images
    return keras.ops.convert_to_numpy(segmenter(inputs, training=False))


def save_preset(segmenter, preset_dir: str | os.PathLike, *, force: bool = False) -> float:
    """Writes `segmenter.save_to_preset` to `preset_dir` atomically, after reloading it and comparing.

    The preset is written to a temporary folder beside `preset_dir`, loaded back with
    `keras_hub.models.ImageSegmenter.from_preset` and compared with `segmenter` on a seeded probe image; only
    then is it renamed into place.

    Returns:
        The largest absolute difference of the reloaded preset's logits (0 when all is well).

    Raises:
        FileExistsError: `preset_dir` exists and not `force`; ValueError: the reloaded preset differs.
    """
    import keras_hub

    probe = _probe()
    expected = segment(segmenter, probe)
    result = {}

    def write(tmp):
        segmenter.save_to_preset(tmp)
        reloaded = keras_hub.models.ImageSegmenter.from_preset(tmp)
        result["diff"] = float(np.max(np.abs(segment(reloaded, probe) - expected)))
        if result["diff"] != 0:
            raise ValueError(f"The reloaded preset differs by {result['diff']}. Received: preset_dir={preset_dir!r}")

    _write_preset_atomically(os.fspath(preset_dir), write, force)
    return result["diff"]


def keras_to_preset(
    model_path: str | os.PathLike,
    preset_dir: str | os.PathLike,
    *,
    class_names: Sequence[str] | None = None,
    force: bool = False,
) -> object:
    """Writes a `.keras` FCN (and its class names) as a preset.

    Args:
        model_path: a `.keras` FCN built by keras_fcn (trained, or imported by `keras-fcn convert`).
        preset_dir: the folder to write.
        class_names: default: `NAME.classes.txt` beside `NAME.keras`, else `classes.txt` beside it, else none.
        force: replace an existing `preset_dir`.

    Returns:
        The `FCNImageSegmenter` written.
    """
    import keras

    from keras_fcn import register_keras_objects
    from keras_fcn.hub import from_functional

    register_keras_objects()
    model_path = os.fspath(model_path)
    if not os.path.isfile(model_path):
        raise ValueError(f"Model file not found. Received: model={model_path!r}")
    model = keras.saving.load_model(model_path, compile=False)
    if class_names is None:
        class_names = read_class_names_beside(model_path)
    segmenter = from_functional(model, class_names=class_names)
    save_preset(segmenter, preset_dir, force=force)
    return segmenter


def read_class_names_beside(model_path: str) -> list[str] | None:
    """`NAME.classes.txt` beside `NAME.keras`, else `classes.txt` in its folder; None when neither exists."""
    listed = os.path.splitext(os.path.abspath(model_path))[0] + ".classes.txt"
    if not os.path.isfile(listed):
        listed = os.path.join(os.path.dirname(os.path.abspath(model_path)), "classes.txt")
    if not os.path.isfile(listed):
        return None
    with open(listed, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def caffemodel_to_preset(
    path: str | os.PathLike,
    preset_dir: str | os.PathLike,
    *,
    prototxt: str | os.PathLike | None = None,
    force: bool = False,
    verbose: bool = True,
) -> dict:
    """Imports one of the reference's `.caffemodel` files (see `keras_fcn.caffe`) and writes it as a preset.

    An FCN becomes an `FCNImageSegmenter` preset with its dataset's class names and mean pixel; the VGG16
    classifier becomes an `FCNBackbone` preset (blocks, fc6, fc7; fc8 is left out) with its preprocessor.

    Returns:
        `{"recognised": Recognised, "preset_dir": str, "max_abs_diff": float}`.

    Raises:
        CaffeModelError: bad input (nothing is written); FileExistsError: `preset_dir` exists and not `force`.
    """
    import keras

    from keras_fcn.caffe import _load
    from keras_fcn.hub import FCNBackbone, FCNImageConverter, FCNImageSegmenterPreprocessor, from_functional

    model, found = _load(os.fspath(path), prototxt)
    preset_dir = os.fspath(preset_dir)
    if found.variant != "vgg16":
        segmenter = from_functional(model, class_names=found.class_names)
        expected = keras.ops.convert_to_numpy(model(_probe()))
        del model
        diff = save_preset(segmenter, preset_dir, force=force)
        diff = max(diff, float(np.max(np.abs(segment(segmenter, _probe()) - expected))))
    else:
        backbone = FCNBackbone(found.backbone_filters, found.fc_units, geometry="caffe")
        for layer in backbone.layers:
            if layer.weights:
                layer.set_weights(model.get_layer(layer.name).get_weights())
        preprocessor = FCNImageSegmenterPreprocessor(FCNImageConverter(mean=found.mean))

        def write(tmp):
            backbone.save_to_preset(tmp)
            preprocessor.save_to_preset(tmp)

        _write_preset_atomically(preset_dir, write, force)
        diff = 0.0
    if verbose:
        kind = "FCNBackbone" if found.variant == "vgg16" else "FCNImageSegmenter"
        print(f"recognised {found.describe()}")
        print(f"wrote {kind} preset {preset_dir} ({found.num_classes} class names); the reloaded preset equals the "
              f"imported model on a probe (max |difference| {diff:.3g})")  # fmt: skip
    return {"recognised": found, "preset_dir": preset_dir, "max_abs_diff": diff}


def load_preset(preset: str, **kwargs):
    """`FCNImageSegmenter.from_preset(preset, **kwargs)`: a folder, a handle or a built-in name."""
    from keras_fcn.hub import FCNImageSegmenter

    return FCNImageSegmenter.from_preset(preset, **kwargs)


def load_functional(preset: str):
    """The functional model (raw RGB in, logits out) of an `FCNImageSegmenter` preset, and its class names.

    The CLI verbs take it as they take a `.keras` file.
    """
    from keras_fcn.hub import to_functional

    segmenter = load_preset(preset)
    return to_functional(segmenter), segmenter.class_names


def load_layers(preset: str):
    """The model of a preset whose layers can be copied by name (`init_from`): the segmenter of a task preset,
    the `FCNBackbone` of a backbone-only preset (e.g. `vgg16_ilsvrc`)."""
    from keras_fcn.hub import FCNBackbone, FCNImageSegmenter

    local = preset_path(preset)
    if "://" in local or os.path.isfile(os.path.join(local, "task.json")):
        try:
            return FCNImageSegmenter.from_preset(local)
        except FileNotFoundError:
            if "://" not in local:
                raise
    return FCNBackbone.from_preset(local)
