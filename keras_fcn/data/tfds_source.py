"""TensorFlow Datasets as a segmentation source.

Any TFDS dataset with an image feature and a mask feature works (`image_key`, `mask_key`). Known
datasets come with their class names and a mapping from the stored mask values to class ids:

- `oxford_iiit_pet`: the trimap (1 = pet, 2 = background, 3 = border, not classified) becomes
  class 0 = background, class 1 = pet, and the border 255 (ignored, as VOC's object outlines are).
  With `pet_classes="species"` the pet pixels are class 1 (cat) or 2 (dog) from the `species` label.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from keras_fcn.data.files import IGNORE_LABEL, DataError, check_mask
from keras_fcn.data.sources import Source, _check_num_classes, _class_names, check_shard

PET_TRIMAP = {1: 1, 2: 0, 3: IGNORE_LABEL}  # stored value -> class id


class TFDSSource(Source):
    """A TFDS split as `(image, mask)` pairs.

    Args:
        name: TFDS dataset name, e.g. `"oxford_iiit_pet"`.
        split: TFDS split string (`"train"`, `"test[:10%]"`, ...).
        num_classes: number of classes (known datasets: filled in).
        class_names: class names (known datasets: filled in).
        image_key: feature holding the RGB image.
        mask_key: feature holding the mask `(H, W)` or `(H, W, 1)`.
        value_map: dict from stored mask value to class id (unlisted values raise an error); None keeps
            the values.
        data_dir: TFDS data folder (default: TFDS's own).
        download: let TFDS download and prepare the dataset if it is not there yet.
        pet_classes: for `oxford_iiit_pet`: `"binary"` (background, pet) or `"species"` (background,
            cat, dog).

    Example:
    >>> pets = TFDSSource("oxford_iiit_pet", split="train")  # doctest: +SKIP
    """

    def __init__(
        self,
        name: str,
        split: str = "train",
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        image_key: str = "image",
        mask_key: str | None = None,
        value_map: dict[int, int] | None = None,
        data_dir: str | None = None,
        download: bool = True,
        pet_classes: str = "binary",
    ):
        species = None
        if name.split("/")[0].split(":")[0] == "oxford_iiit_pet":
            if pet_classes not in ("binary", "species"):
                raise ValueError(
                    f"`pet_classes` must be 'binary' or 'species'. Received: pet_classes={pet_classes!r}"
                )
            mask_key = mask_key or "segmentation_mask"
            value_map = PET_TRIMAP if value_map is None else value_map
            species = "species" if pet_classes == "species" else None
            default_names = ("background", "cat", "dog") if species else ("background", "pet")
            if class_names is None and num_classes in (None, len(default_names)):
                class_names = default_names
            num_classes = num_classes or len(default_names)
        if mask_key is None:
            raise ValueError(f"`mask_key` is required for TFDS dataset {name!r}. Received: mask_key=None")
        if num_classes is None:
            raise ValueError(
                f"`num_classes` is required for TFDS dataset {name!r}. Received: num_classes=None"
            )
        self.num_classes = _check_num_classes(num_classes)
        self.class_names = _class_names(class_names, self.num_classes)
        self.name = f"tfds:{name}:{split}"
        self.tfds_name, self.split = name, split
        self.image_key, self.mask_key = image_key, mask_key
        self.value_map = dict(value_map) if value_map is not None else None
        self.data_dir, self.download = data_dir, download
        self._species_key = species
        self._length: int | None = None

    def _load(self, shuffle: bool, seed: int | None, shard: tuple[int, int] | None = None) -> tf.data.Dataset:
        import tensorflow_datasets as tfds

        read_config = tfds.ReadConfig(shuffle_seed=seed, add_tfds_id=True)
        split = self.split
        if shard is not None:
            # TFDS reads only this worker's slice of the split (1/count of the examples), so nothing
            # else is read or decoded; sharding by file (`ReadConfig.input_context`) would need at
            # least as many files as workers.
            index, count = check_shard(shard)
            split = tfds.even_splits(self.split, n=count)[index]
        try:
            dataset, info = tfds.load(
                self.tfds_name,
                split=split,
                data_dir=self.data_dir,
                download=self.download,
                shuffle_files=shuffle,
                with_info=True,
                read_config=read_config,
            )
        except Exception as error:  # TFDS raises many types (DatasetNotFoundError, AssertionError, ...)
            raise DataError(
                f"Cannot load TFDS dataset {self.tfds_name!r} split {self.split!r}: {error}"
            ) from error
        if shard is not None:
            return dataset
        try:
            self._length = info.splits[self.split].num_examples
        except (KeyError, ValueError):  # split arithmetic TFDS cannot size, or no metadata
            cardinality = int(dataset.cardinality())
            self._length = cardinality if cardinality >= 0 else None
        return dataset

    def __len__(self) -> int:
        if self._length is None:
            self._load(False, None)
        if self._length is None:
            raise TypeError(f"The length of {self.name} is not known.")
        return int(self._length)

    def dataset(
        self, shuffle: bool = False, seed: int | None = None, shard: tuple[int, int] | None = None
    ) -> tf.data.Dataset:
        dataset = self._load(shuffle, seed, shard)
        for key in (self.image_key, self.mask_key):
            if key not in dataset.element_spec:
                raise DataError(
                    f"TFDS dataset {self.tfds_name!r} has no feature {key!r}; its features are "
                    f"{sorted(dataset.element_spec)}. Received: {key!r}"
                )
        lookup = _lookup_table(self.value_map)
        check = _checker(self.num_classes, self.name)

        def convert(example):
            image = tf.convert_to_tensor(example[self.image_key])
            if image.shape.rank == 3 and image.shape[-1] == 1:
                image = tf.image.grayscale_to_rgb(image)
            image = tf.ensure_shape(tf.cast(image, tf.uint8), (None, None, 3))
            mask = tf.convert_to_tensor(example[self.mask_key])
            if mask.shape.rank == 3:
                mask = mask[..., 0]
            mask = tf.cast(mask, tf.int32)
            where = example.get("tfds_id", tf.constant(self.name))
            if lookup is not None:
                mask = lookup(mask)  # unlisted values become -1 and are reported by the check below
            if self._species_key is not None:
                species = tf.cast(example[self._species_key], tf.int32)  # 0 cat, 1 dog
                mask = tf.where(mask == 1, species + 1, mask)
            image, mask = tf.numpy_function(check, [image, mask, where], (tf.uint8, tf.uint8), stateful=False)
            return tf.ensure_shape(image, (None, None, 3)), tf.ensure_shape(mask, (None, None))

        return dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def tfds(name: str, split: str = "train", **kwargs) -> TFDSSource:
    """Shorthand for `TFDSSource(name, split, **kwargs)`."""
    return TFDSSource(name, split, **kwargs)


def _lookup_table(value_map: dict[int, int] | None) -> Callable | None:
    if value_map is None:
        return None
    table = np.full(256, -1, dtype=np.int32)
    for stored, label in value_map.items():
        table[int(stored)] = int(label)
    table = tf.constant(table)
    return lambda mask: tf.gather(table, tf.clip_by_value(mask, 0, 255))


def _checker(num_classes: int, name: str) -> Callable:
    def check(image: np.ndarray, mask: np.ndarray, where) -> tuple[np.ndarray, np.ndarray]:
        where = where.decode() if isinstance(where, bytes) else str(where)
        if image.shape[:2] != mask.shape:
            raise DataError(
                f"Image and mask of {name} example {where} differ in size. "
                f"Received: image (H, W)={image.shape[:2]}, mask (H, W)={mask.shape}"
            )
        if (mask < 0).any():
            raise DataError(
                f"Mask of {name} example {where} holds values the value map does not list. "
                f"Received: values={np.unique(mask).tolist()} (-1 = unlisted)"
            )
        mask = mask.astype(np.uint8)
        check_mask(mask, num_classes, f"of {name} example {where}")
        return image, mask

    return check
