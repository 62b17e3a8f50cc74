"""A RunInference `ModelHandler` over an exported SavedModel's signature.

Beam's own TensorFlow handlers load models with `tf.keras.models.load_model`, which Keras 3 refuses for
SavedModel folders, and import `tensorflow_hub`; this one loads the folder with `tf.saved_model.load` and
calls a serving signature (`serving_default` on pixels, or `serve_png` on the encoded files).

Examples are `ImageExample(pixels, data)`. A batch is split by image size before anything is stacked
(images of different sizes never share a call), and each call holds at most the signature's pixel cap;
an image past the cap is predicted in tiles (`keras_fcn.tiling.predict_tiled` over `serving_default`'s
probabilities). The cap is the export's default unless given, and is learnt from the SavedModel's own
refusal ("... the limit is N") when the export used another.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from PIL import Image

from keras_fcn.export import DEFAULT_MAX_DECODED_PIXELS, SERVE_PNG, SERVING_DEFAULT
from keras_fcn.variants import STRIDE

SIGNATURES = (SERVING_DEFAULT, SERVE_PNG)
_LIMIT = re.compile(r"images too large: .* the limit is (\d+)")


class ImageExample(NamedTuple):
    """One image: uint8 RGB `pixels` `(H, W, 3)`, and the file's bytes when it is a JPEG or PNG (`serve_png`)."""

    pixels: np.ndarray
    data: bytes | None = None


class InferenceError(Exception):
    """In place of an image's class ids: why the signature refused that one image (its batch-mates are answered)."""


def image_pixels(example: ImageExample) -> int:
    """The example's pixel count: its weight in a batch."""
    height, width = example.pixels.shape[:2]
    return int(height * width)


class SavedModelRunner:
    """A loaded SavedModel's signatures, called on numpy batches (what one worker holds, shared by its threads)."""

    def __init__(self, path: str, signature: str):
        import tensorflow as tf

        self._tf = tf
        self.loaded = tf.saved_model.load(path)
        self.serving_default = self.loaded.signatures[SERVING_DEFAULT]
        self.serve_png = self.loaded.signatures[SERVE_PNG] if signature == SERVE_PNG else None

    def class_ids(self, examples: Sequence[ImageExample]) -> np.ndarray:
        """Class ids `(N, H, W)` int32 of images of one size, in one call of the signature."""
        tf = self._tf
        if self.serve_png is None:
            pixels = np.stack([example.pixels for example in examples])  # (N, H, W, 3) uint8
            return self.serving_default(images=tf.constant(pixels))["class_ids"].numpy()
        data = [example.data if example.data is not None else _png(example.pixels) for example in examples]
        pngs = self.serve_png(image_bytes=tf.constant(data))["class_map_png_bytes"].numpy()
        return np.stack([np.asarray(Image.open(io.BytesIO(png)), np.int32) for png in pngs])

    def probabilities(self, tiles: np.ndarray) -> np.ndarray:
        """`serving_default`'s probabilities `(N, h, w, C)` of float tiles holding uint8 values (tiling)."""
        images = self._tf.constant(np.asarray(tiles).astype(np.uint8))
        return self.serving_default(images=images)["probabilities"].numpy()


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def tile_side(max_pixels: int) -> int:
    """The largest tile side, a multiple of the stride, whose square fits within `max_pixels`."""
    return max(STRIDE, STRIDE * (math.isqrt(max_pixels) // STRIDE))


class SavedModelHandler(ModelHandler[ImageExample, np.ndarray, SavedModelRunner]):
    """Runs an exported FCN's signature on batches of images: class ids `(H, W)` int32 per image.

    Args:
        model_dir: a SavedModel version folder (`models/fcn/3`), local or on any filesystem TensorFlow reads.
        signature: `"serving_default"` (pixels in) or `"serve_png"` (JPEG/PNG bytes in, a class-map PNG out).
        max_batch_size: most images per call.
        max_pixels: the signature's pixel cap (`export --max-decoded-pixels`); calls stay within it and larger
            images are tiled. Learnt from the SavedModel's refusal when it is lower than given.
        tiling: `predict_tiled`'s `tile_size` (default: the largest multiple of 32 within the cap), `overlap`
            and `blend` for images past the cap.
        model_copies: None keeps one model per worker process, shared by its threads; N shares N copies among
            the processes of a machine (Beam's `model_copies`, for machines with many processes).
        load_log: a file to which each load appends a line with its process id (how many copies a job loads).

    Example:
    >>> handler = KeyedModelHandler(SavedModelHandler("models/fcn/1"))  # doctest: +SKIP
    >>> results = keyed_examples | RunInference(handler)  # doctest: +SKIP
    """

    def __init__(
        self,
        model_dir: str,
        signature: str = SERVING_DEFAULT,
        *,
        max_batch_size: int = 8,
        max_pixels: int = DEFAULT_MAX_DECODED_PIXELS,
        tiling: dict | None = None,
        model_copies: int | None = None,
        load_log: str | None = None,
    ):
        if signature not in SIGNATURES:
            raise ValueError(f"signature must be one of {SIGNATURES}. Received: signature={signature!r}")
        if max_batch_size < 1 or max_pixels < 1:
            raise ValueError(
                f"max_batch_size and max_pixels must be positive. Received: max_batch_size={max_batch_size}, "
                f"max_pixels={max_pixels}"
            )
        super().__init__()  # the settings below are methods: 2.70 takes no keywords here
        self.model_dir, self.signature, self.max_pixels = model_dir, signature, max_pixels
        self.max_batch_size, self.copies = max_batch_size, model_copies
        self.tiling = dict(tiling or {})
        self.load_log = load_log

    def batch_elements_kwargs(self) -> dict:
        # Batches may mix sizes: `run_inference` splits them by size, and each size into calls within the cap.
        return {"max_batch_size": self.max_batch_size}

    def share_model_across_processes(self) -> bool:
        return self.copies is not None

    def model_copies(self) -> int:
        return self.copies or 1

    def load_model(self) -> SavedModelRunner:
        runner = SavedModelRunner(self.model_dir, self.signature)
        if self.load_log:
            with open(self.load_log, "a", encoding="utf-8") as log:
                log.write(f"{os.getpid()}\n")
        return runner

    def run_inference(
        self, batch: Sequence[ImageExample], model: SavedModelRunner, inference_args: dict | None = None
    ) -> Iterable[PredictionResult]:
        results: list[Any] = [None] * len(batch)
        by_size: dict[tuple[int, int], list[int]] = {}
        for index, example in enumerate(batch):
            by_size.setdefault(tuple(example.pixels.shape[:2]), []).append(index)
        for indices in by_size.values():
            for index, class_ids in zip(indices, self._predict_size(model, [batch[i] for i in indices]), strict=True):
                results[index] = PredictionResult(batch[index], class_ids, self.model_dir)
        return results

    def _predict_size(self, model: SavedModelRunner, examples: list[ImageExample]) -> list:
        """Class ids of images of one size: in calls within the cap, or tiled past it; an `InferenceError` in
        place of an image the signature refuses."""
        import tensorflow as tf

        pixels = image_pixels(examples[0])
        if pixels > self.max_pixels:
            return [self._tiled(model, example) for example in examples]
        per_call = max(1, self.max_pixels // pixels)
        out = []
        for start in range(0, len(examples), per_call):
            chunk = examples[start : start + per_call]
            try:
                out.extend(model.class_ids(chunk))
            except tf.errors.InvalidArgumentError as error:
                found = _LIMIT.search(str(error))
                if found and int(found.group(1)) < self.max_pixels:
                    self.max_pixels = int(found.group(1))  # the export's own cap: retry within it
                    out.extend(self._predict_size(model, chunk))
                elif len(chunk) > 1:
                    # One image the signature refuses (bytes it cannot decode) must not sink its batch-mates.
                    out.extend(self._predict_size(model, [example])[0] for example in chunk)
                else:
                    out.append(InferenceError(f"the model refused the image: {error.message.strip()}"))
        return out

    def _tiled(self, model: SavedModelRunner, example: ImageExample) -> np.ndarray:
        import tensorflow as tf

        from keras_fcn.tiling import predict_tiled

        options = {"overlap": 0.25, "blend": "gaussian", **{k: v for k, v in self.tiling.items() if v is not None}}
        side = options.pop("tile_size", None) or tile_side(self.max_pixels)
        batch_size = max(1, self.max_pixels // (side * side))
        try:
            return predict_tiled(model.probabilities, example.pixels, tile_size=side, batch_size=batch_size, **options)
        except tf.errors.InvalidArgumentError as error:
            found = _LIMIT.search(str(error))
            if not found or int(found.group(1)) >= self.max_pixels:
                raise
            self.max_pixels = int(found.group(1))  # the export's own cap: smaller tiles
            return self._tiled(model, example)

    def get_num_bytes(self, batch: Sequence[ImageExample]) -> int:
        return sum(example.pixels.nbytes for example in batch)

    def get_metrics_namespace(self) -> str:
        return "keras_fcn"
