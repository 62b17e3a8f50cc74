"""Data sources named by one string, for the command line and the training config.

| spec                     | source                                                          |
|--------------------------|-----------------------------------------------------------------|
| `synthetic[:N]`          | `SyntheticShapes` with N examples (the split picks the seed)    |
| `voc:ROOT`               | PASCAL VOC (`ROOT` = `VOCdevkit/VOC2012`)                        |
| `sbd:ROOT`               | SBD (`ROOT` = `benchmark_RELEASE/dataset`)                       |
| `folder:IMAGES,MASKS`    | two folders with matching file names                            |
| `folder:ROOT`            | `ROOT/images` + `ROOT/masks`, or `ROOT/<split>/images` + `.../masks` |
| `tfds:NAME`              | a TFDS dataset (e.g. `tfds:oxford_iiit_pet`)                     |
"""

from __future__ import annotations

import os
import zlib

from keras_fcn.data.files import DataError
from keras_fcn.data.sources import Source, folder, sbd, voc
from keras_fcn.data.synthetic import SyntheticShapes
from keras_fcn.data.tfds_source import TFDSSource

KINDS = ("synthetic", "voc", "sbd", "folder", "tfds")
# Synthetic splits are disjoint because their seeds differ.
_SYNTHETIC_SPLIT_SEEDS = {"train": 0, "val": 1_000_003, "test": 2_000_003}


def from_spec(
    spec: str,
    split: str = "train",
    num_classes: int | None = None,
    class_names=None,
    seed: int = 0,
    **options,
) -> Source:
    """Builds a source from a spec string (see the module docstring).

    Args:
        spec: the spec, e.g. `"voc:/data/VOCdevkit/VOC2012"`.
        split: `train`, `val`, ... (for `voc`: also `seg11valid`).
        num_classes: number of classes; required for `folder` and unknown TFDS datasets, defaults to
            21 for VOC/SBD and 5 for synthetic data.
        class_names: optional names.
        seed: base seed of synthetic data (the split adds an offset).
        **options: passed to the source (`image_size` for synthetic, `image_key`/`mask_key` for TFDS).

    Raises:
        ValueError: unknown kind or malformed spec.
        DataError: missing folders or files.
    """
    kind, _, rest = spec.partition(":")
    if kind not in KINDS:
        raise ValueError(f"Data spec must start with one of {', '.join(KINDS)}. Received: spec={spec!r}")
    if kind == "synthetic":
        count = int(rest) if rest else options.pop("num_examples", 1000 if split == "train" else 100)
        # crc32, not hash(): str hashes change with PYTHONHASHSEED, so the split's data would too.
        offset = _SYNTHETIC_SPLIT_SEEDS.get(split, zlib.crc32(split.encode()) % 1_000_000)
        kwargs = {"num_classes": num_classes} if num_classes else {}
        return SyntheticShapes(num_examples=count, seed=seed + offset, **kwargs, **options)
    if not rest:
        raise ValueError(f"Data spec {kind!r} needs a location, as in '{kind}:PATH'. Received: spec={spec!r}")
    if kind == "voc":
        return voc(rest, split, num_classes=num_classes or 21)
    if kind == "sbd":
        return sbd(rest, split, num_classes=num_classes or 21)
    if kind == "tfds":
        return TFDSSource(rest, split, num_classes=num_classes, class_names=class_names, **options)
    # folder
    if num_classes is None:
        raise ValueError(f"A folder source needs `num_classes`. Received: spec={spec!r}, num_classes=None")
    if "," in rest:
        images_dir, masks_dir = rest.split(",", 1)
    else:
        root = os.path.join(rest, split) if os.path.isdir(os.path.join(rest, split, "images")) else rest
        images_dir, masks_dir = os.path.join(root, "images"), os.path.join(root, "masks")
        if not os.path.isdir(images_dir):
            raise DataError(
                f"Images folder not found: {images_dir} (give 'folder:IMAGES,MASKS' for other layouts)"
            )
    return folder(images_dir, masks_dir, num_classes, class_names)
