"""Data sources: each yields `(image uint8 (H, W, 3), mask uint8 (H, W))` with 255 meaning "ignore".

- `voc(root, split)`: PASCAL VOC `VOCdevkit/VOC2012` (`JPEGImages/`, palette PNGs in
  `SegmentationClass/`, lists in `ImageSets/Segmentation/`); split `"seg11valid"` is the reference's
  736-image validation set (VOC2011 val minus SBD train), shipped with the package.
- `sbd(root, split)`: the Semantic Boundaries Dataset `dataset/` folder (`img/*.jpg`, `cls/*.mat`,
  `train.txt`, `val.txt`): the reference's 8,498 training images.
- `folder(images_dir, masks_dir)`: images and masks with matching file names (the stems match).
- `synthetic(...)` (in `synthetic.py`) and `tfds(...)` (in `tfds_source.py`).

File sources decode in parallel inside tf.data (`num_parallel_calls=AUTOTUNE`): JPEG and PNG images with
TensorFlow's decoders (`decode.py`, equal to Pillow's pixels), masks and other image formats with Pillow.
Every mask is checked against `num_classes` as it is read. `dataset(shard=(k, n))` decodes only worker k's
share of the examples.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from keras_fcn.data.decode import decode_image, read_for_tensorflow
from keras_fcn.data.files import (
    IMAGE_EXTENSIONS,
    MASK_EXTENSIONS,
    DataError,
    check_mask,
    check_sizes,
    read_id_list,
    read_image,
    read_mask,
    require_dir,
)
from keras_fcn.labels import VOC_CLASSES

SEG11VALID = os.path.join(os.path.dirname(__file__), "seg11valid.txt")


class Source:
    """A segmentation data source: `num_classes`, `class_names`, and `dataset()`.

    Subclasses set `name`, `num_classes`, `class_names` and implement `dataset()`.
    """

    name: str = "source"
    num_classes: int
    class_names: tuple[str, ...]

    def dataset(
        self, shuffle: bool = False, seed: int | None = None, shard: tuple[int, int] | None = None
    ) -> tf.data.Dataset:
        """Decoded, checked examples `(image uint8 (H, W, 3), mask uint8 (H, W))`, one per element.

        Args:
            shuffle: shuffle the examples (reshuffled every epoch).
            seed: seed of the shuffle.
            shard: `(index, count)`: only the share of worker `index` of `count`, selected before
                anything is decoded. Every worker must pass the same `seed`.
        """
        raise NotImplementedError

    def __len__(self) -> int:
        raise TypeError(f"The length of {self.name} is not known.")

    def decoded_bytes(self) -> int | None:
        """Rough memory footprint of all decoded examples (to decide whether to cache), or None."""
        return None

    def find_undecodable(self) -> DataError | None:
        """The first example that `dataset()` cannot decode, as a `DataError` naming its file, or None.

        `data_errors` asks this when a TensorFlow decoder fails with a message that names no file. Sources
        whose decoding errors already name the file (or that read no files) have nothing to add.
        """
        return None

    def __repr__(self) -> str:
        try:
            size = f", {len(self)} examples"
        except TypeError:
            size = ""
        return f"<{type(self).__name__} {self.name}: {self.num_classes} classes{size}>"


class IndexedSource(Source):
    """A source whose example `i` is produced by `load(i)` in Python (files, synthetic shapes).

    `dataset()` maps a (optionally shuffled) range of indices through `load` in parallel, so a shuffle
    costs nothing but indices and the output order is deterministic. With `shard=(k, n)` only the indices
    at positions k, k + n, k + 2n, ... of that order are loaded: one worker's share, decoded by it alone.
    """

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def dataset(
        self, shuffle: bool = False, seed: int | None = None, shard: tuple[int, int] | None = None
    ) -> tf.data.Dataset:
        return self.indices(shuffle, seed, shard).map(
            self._decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )

    def indices(
        self, shuffle: bool = False, seed: int | None = None, shard: tuple[int, int] | None = None
    ) -> tf.data.Dataset:
        """The int64 indices `dataset()` loads, in its order: shuffled by `seed`, then sharded."""
        indices = tf.data.Dataset.range(len(self))
        if shuffle:
            indices = indices.shuffle(len(self), seed=seed, reshuffle_each_iteration=True)
        if shard is not None:
            index, count = check_shard(shard)
            indices = indices.shard(count, index)
        return indices

    def _decode(self, index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        def load(index):
            image, mask = self.load(int(index))
            return image, mask

        image, mask = tf.numpy_function(load, [index], (tf.uint8, tf.uint8), stateful=False)
        return tf.ensure_shape(image, (None, None, 3)), tf.ensure_shape(mask, (None, None))

    def __iter__(self):
        """Iterates in Python (no TensorFlow): handy to check a whole dataset or look at examples."""
        for index in range(len(self)):
            yield self.load(index)

    def check(self) -> None:
        """Reads every example once; raises `DataError` naming the first bad file."""
        for _ in self:
            pass


class FileSource(IndexedSource):
    """Pairs of (image file, mask file).

    Args:
        pairs: sequence of `(image_path, mask_path)`.
        num_classes: number of classes; masks are checked against it.
        class_names: names of the classes, `num_classes` of them (default: their ids).
        name: a label for messages.

    Raises:
        DataError: if `pairs` is empty.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[str, str]],
        num_classes: int,
        class_names: Sequence[str] | None = None,
        name: str = "files",
    ):
        if not pairs:
            raise DataError(f"No examples found for {name}.")
        self.pairs = [(str(image), str(mask)) for image, mask in pairs]
        self.num_classes = _check_num_classes(num_classes)
        self.class_names = _class_names(class_names, self.num_classes)
        self.name = name

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = self.pairs[index]
        image = read_image(image_path)
        return image, self._read_mask(index, image.shape[:2])

    def _read_mask(self, index: int, image_size: tuple[int, int]) -> np.ndarray:
        image_path, mask_path = self.pairs[index]
        mask = read_mask(mask_path)
        check_sizes(image_size, mask.shape, image_path, mask_path)
        return check_mask(mask, self.num_classes, mask_path)

    def _decode(self, index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        # JPEG and PNG images are decoded by TensorFlow (in parallel, outside the GIL); the masks stay with
        # Pillow, which gives palette indices rather than colours, and reads `.mat` files. One Python call
        # per example reads the image's bytes and size (from its header) and reads and checks the mask.
        def read(index):
            contents, size = read_for_tensorflow(self.pairs[index][0])
            return contents, self._read_mask(index, size)

        contents, mask = tf.numpy_function(read, [index], (tf.string, tf.uint8), stateful=False)
        return decode_image(tf.reshape(contents, ())), tf.ensure_shape(mask, (None, None))

    def find_undecodable(self) -> DataError | None:
        """The first image that the TensorFlow decoding of `dataset()` rejects, as a `DataError` naming it.

        TensorFlow's decode errors do not name the file: `data_errors` calls this to find it (one pass over
        the images, decoded again eagerly).
        """
        for image_path, _ in self.pairs:
            try:
                decode_image(tf.constant(read_for_tensorflow(image_path)[0]))
            except DataError as error:
                return error
            except tf.errors.OpError as error:
                # "{{function_node ...DecodePng...}} Invalid PNG data, size 3517 [Op:DecodePng] name: "
                reason = re.sub(r"\{\{.*?\}\}|\[Op:.*", "", error.message or "").strip()
                return DataError(f"Cannot read image file {image_path}: {reason}")
        return None

    def decoded_bytes(self) -> int | None:
        with_size = _image_size(self.pairs[0][0])
        if with_size is None:
            return None
        height, width = with_size
        return len(self) * height * width * 4  # 3 image bytes + 1 mask byte per pixel


def check_shard(shard) -> tuple[int, int]:
    """`(index, count)` as ints, or a `ValueError` unless `0 <= index < count`."""
    try:
        index, count = (int(v) for v in shard)
    except (TypeError, ValueError):
        index, count = -1, 0
    if not 0 <= index < count:
        raise ValueError(f"`shard` must be (index, count) with 0 <= index < count. Received: shard={shard}")
    return index, count


def _image_size(path: str) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.height, image.width
    except OSError:
        return None


def _check_num_classes(num_classes) -> int:
    if not isinstance(num_classes, int | np.integer) or not 1 <= num_classes <= 255:
        raise ValueError(f"`num_classes` must be an integer in [1, 255]. Received: num_classes={num_classes}")
    return int(num_classes)


def _class_names(class_names: Sequence[str] | None, num_classes: int) -> tuple[str, ...]:
    if class_names is None:
        return tuple(str(i) for i in range(num_classes))
    class_names = tuple(str(name) for name in class_names)
    if len(class_names) != num_classes:
        raise ValueError(
            f"`class_names` must have one name per class ({num_classes}). "
            f"Received: class_names={list(class_names)}"
        )
    return class_names


def voc(root: str, split: str = "train", num_classes: int = 21) -> FileSource:
    """PASCAL VOC segmentation (`VOCdevkit/VOC2012` or `VOC2011`).

    Args:
        root: the `VOC2012` folder holding `JPEGImages/`, `SegmentationClass/` and
            `ImageSets/Segmentation/`.
        split: a list name in `ImageSets/Segmentation/` (`train`, `val`, `trainval`), `"seg11valid"` (the
            reference's validation list, shipped with this package), or a path to a list file.
        num_classes: 21 for VOC (background + 20 objects).

    Returns:
        A `FileSource` with the VOC class names.

    Raises:
        DataError: missing folders, missing or empty split list.

    Example:
    >>> val = voc("VOCdevkit/VOC2012", "seg11valid")  # doctest: +SKIP
    """
    require_dir(root, "PASCAL VOC root")
    images_dir = require_dir(os.path.join(root, "JPEGImages"), "PASCAL VOC JPEGImages")
    masks_dir = require_dir(os.path.join(root, "SegmentationClass"), "PASCAL VOC SegmentationClass")
    ids = read_id_list(_split_file(split, os.path.join(root, "ImageSets", "Segmentation")))
    pairs = [(os.path.join(images_dir, f"{i}.jpg"), os.path.join(masks_dir, f"{i}.png")) for i in ids]
    names = VOC_CLASSES if num_classes == len(VOC_CLASSES) else None
    return FileSource(pairs, num_classes, names, name=f"voc:{split}")


def _split_file(split: str, lists_dir: str) -> str:
    if os.path.sep in split or split.endswith(".txt"):
        return split
    if split == "seg11valid" and not os.path.isfile(os.path.join(lists_dir, "seg11valid.txt")):
        return SEG11VALID
    return os.path.join(lists_dir, f"{split}.txt")


def sbd(root: str, split: str = "train", num_classes: int = 21) -> FileSource:
    """The Semantic Boundaries Dataset (Hariharan et al.), the reference's training set.

    Args:
        root: the `dataset` folder holding `img/`, `cls/` and `train.txt`/`val.txt`.
        split: `train` (8,498 images), `val`, or a path to a list file.
        num_classes: 21 (the VOC classes).

    Raises:
        DataError: missing folders, missing or empty split list.
    """
    require_dir(root, "SBD root")
    images_dir = require_dir(os.path.join(root, "img"), "SBD img")
    masks_dir = require_dir(os.path.join(root, "cls"), "SBD cls")
    ids = read_id_list(_split_file(split, root))
    pairs = [(os.path.join(images_dir, f"{i}.jpg"), os.path.join(masks_dir, f"{i}.mat")) for i in ids]
    names = VOC_CLASSES if num_classes == len(VOC_CLASSES) else None
    return FileSource(pairs, num_classes, names, name=f"sbd:{split}")


def without(source: FileSource, exclude: str) -> FileSource:
    """`source` less the examples whose ids (image file names without extension) a list names.

    The reference trains on SBD train and validates on seg11valid; this guarantees that no validation
    image is trained on, whatever the lists on disk hold.

    Args:
        source: a `FileSource` (VOC, SBD, folders).
        exclude: `"seg11valid"` (the list shipped with this package) or a path to a list file.

    Returns:
        A `FileSource` named like `"sbd:train without seg11valid (0 left out)"`.

    Raises:
        DataError: a missing or empty list, or nothing left.
        ValueError: a source that is not made of files.
    """
    if not isinstance(source, FileSource):
        raise ValueError(f"Only file sources can leave ids out. Received: source={source!r}")
    path = SEG11VALID if exclude == "seg11valid" else exclude
    ids = set(read_id_list(path))
    pairs = [pair for pair in source.pairs if os.path.splitext(os.path.basename(pair[0]))[0] not in ids]
    if not pairs:
        raise DataError(f"No examples of {source.name} are left once the ids of {path} are left out.")
    label = os.path.splitext(os.path.basename(exclude))[0]
    name = f"{source.name} without {label} ({len(source) - len(pairs)} left out)"
    return FileSource(pairs, source.num_classes, source.class_names, name=name)


def folder(
    images_dir: str,
    masks_dir: str,
    num_classes: int,
    class_names: Sequence[str] | None = None,
) -> FileSource:
    """Images and masks in two folders, paired by file name without extension (`a.jpg` ↔ `a.png`).

    Masks are palette or grayscale PNGs (or `.mat`) holding class ids; 255 means "ignore".

    Raises:
        DataError: missing folder, no images, or an image without a mask (named).
    """
    require_dir(images_dir, "Images")
    require_dir(masks_dir, "Masks")
    masks = {}
    for name in sorted(os.listdir(masks_dir)):
        stem, ext = os.path.splitext(name)
        if ext.lower() in MASK_EXTENSIONS:
            masks.setdefault(stem, os.path.join(masks_dir, name))
    pairs = []
    for name in sorted(os.listdir(images_dir)):
        stem, ext = os.path.splitext(name)
        if ext.lower() not in IMAGE_EXTENSIONS:
            continue
        if stem not in masks:
            raise DataError(f"No mask for image {os.path.join(images_dir, name)} in {masks_dir}")
        pairs.append((os.path.join(images_dir, name), masks[stem]))
    if not pairs:
        raise DataError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) found in {images_dir}")
    return FileSource(pairs, num_classes, class_names, name=f"folder:{images_dir}")
