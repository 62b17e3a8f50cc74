"""Generated dataset folders for the data tests: VOC, SBD and plain folders, with real file formats."""

from __future__ import annotations

import os

import numpy as np
import scipy.io
from PIL import Image


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (bit-interleaved), written independently of keras_fcn."""
    palette = []
    for k in range(256):
        r = g = b = 0
        label = k
        for i in range(8):
            r |= ((label >> 0) & 1) << (7 - i)
            g |= ((label >> 1) & 1) << (7 - i)
            b |= ((label >> 2) & 1) << (7 - i)
            label >>= 3
        palette += [r, g, b]
    return palette


def example(rng, size, num_classes):
    """An image whose red channel encodes the class of each 4x4 block, and the matching mask."""
    h, w = size
    blocks = rng.integers(0, num_classes, size=(h // 4 + 1, w // 4 + 1))
    mask = np.kron(blocks, np.ones((4, 4), dtype=np.int64))[:h, :w].astype(np.uint8)
    mask[0, :] = 255  # a void border row, as VOC draws object outlines
    image = np.stack([mask.astype(np.int64) * 10 % 256, np.full((h, w), 100), np.full((h, w), 50)], -1).astype(np.uint8)
    return image, mask


def save_palette_png(path, mask):
    image = Image.fromarray(mask, mode="P")
    image.putpalette(voc_palette())
    image.save(path)


def make_voc(root, ids_by_split, size=(20, 28), num_classes=21, seed=0):
    rng = np.random.default_rng(seed)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    masks = {}
    for split, ids in ids_by_split.items():
        with open(os.path.join(root, "ImageSets/Segmentation", f"{split}.txt"), "w") as f:
            f.write("".join(f"{i}\n" for i in ids))
        for i in ids:
            if i in masks:
                continue  # in another split too (VOC's val holds seg11valid): one example a file
            image, mask = example(rng, size, num_classes)
            Image.fromarray(image).save(os.path.join(root, "JPEGImages", f"{i}.jpg"), quality=100, subsampling=0)
            save_palette_png(os.path.join(root, "SegmentationClass", f"{i}.png"), mask)
            masks[i] = (image, mask)
    return masks


def make_sbd(root, ids_by_split, size=(18, 22), num_classes=21, seed=1):
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    os.makedirs(os.path.join(root, "cls"), exist_ok=True)
    arrays = {}
    for split, ids in ids_by_split.items():
        with open(os.path.join(root, f"{split}.txt"), "w") as f:
            f.write("".join(f"{i}\n" for i in ids))
        for i in ids:
            image, mask = example(rng, size, num_classes)
            mask[mask == 255] = 0  # SBD has no void label
            Image.fromarray(image).save(os.path.join(root, "img", f"{i}.jpg"), quality=100, subsampling=0)
            gt = {"Segmentation": mask, "Boundaries": np.zeros((1, 1)), "CategoriesPresent": np.unique(mask)}
            scipy.io.savemat(os.path.join(root, "cls", f"{i}.mat"), {"GTcls": gt})
            arrays[i] = (image, mask)
    return arrays


def make_folder(root, names, size=(16, 24), num_classes=4, seed=2, palette=False):
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "masks"), exist_ok=True)
    arrays = {}
    for name in names:
        image, mask = example(rng, size, num_classes)
        Image.fromarray(image).save(os.path.join(root, "images", f"{name}.png"))
        if palette:
            save_palette_png(os.path.join(root, "masks", f"{name}.png"), mask)
        else:
            Image.fromarray(mask, mode="L").save(os.path.join(root, "masks", f"{name}.png"))
        arrays[name] = (image, mask)
    return arrays
