"""Reading images and masks from files, and the checks that name the file when something is wrong.

Masks hold one class id per pixel (255 = "ignore"). They come as palette PNGs (PASCAL VOC), grayscale
PNGs, or MATLAB files (SBD's `cls/*.mat`). The classic mistakes are caught here with a message that says
which file and which values: 0/255 binary masks, RGB colour masks, class counts off by one.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from keras_fcn.labels import IGNORE_LABEL

# A mask of only 0 and 255 with more 255 than this is taken for a 0/255 binary mask.
VOID_FRACTION_LIMIT = 0.25
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MASK_EXTENSIONS = (".png", ".bmp", ".gif", ".tif", ".tiff", ".mat")


class DataError(ValueError):
    """A problem with the data on disk (missing folder, unreadable file, bad mask); names the file."""


def read_image(path: str, contents: bytes | None = None) -> np.ndarray:
    """Reads an image file as uint8 RGB `(H, W, 3)`; grayscale and RGBA are converted.

    Args:
        path: the file.
        contents: the file's bytes when already read (`path` then only names it in errors).

    Raises:
        DataError: if the file is missing or not an image.
    """
    if contents is None:
        contents = read_bytes(path)  # names a missing or unreadable file
    try:
        with Image.open(io.BytesIO(contents)) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except Image.DecompressionBombError as error:
        raise DataError(
            f"Cannot read image file {path}: {error} Pillow refuses images this large as a guard against "
            "decompression bombs; for a file you trust, raise the limit (keras-fcn predict --max-image-pixels N, "
            "or PIL.Image.MAX_IMAGE_PIXELS = N)."
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(f"Cannot read image file {path}: {error}") from None


def read_bytes(path: str) -> bytes:
    """The bytes of an image file; raises `DataError` ("Image file not found: ...") if it is missing."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise DataError(f"Image file not found: {path}") from None
    except OSError as error:
        raise DataError(f"Cannot read image file {path}: {error}") from None


def read_mask(path: str) -> np.ndarray:
    """Reads a mask of class ids as uint8 `(H, W)`.

    Palette PNGs give their palette indices (not colours); grayscale images their values; `.mat` files
    the SBD layout `GTcls.Segmentation`.

    Raises:
        DataError: if the file is missing or unreadable, or holds colours instead of class ids.
    """
    if path.lower().endswith(".mat"):
        return _read_mat_mask(path)
    try:
        with Image.open(path) as mask:
            mode = mask.mode
            if mode in ("RGB", "RGBA"):
                array = np.asarray(mask.convert("RGB"))
                if np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(
                    array[..., 0], array[..., 2]
                ):
                    return array[..., 0].copy()  # a gray image saved as RGB
                raise DataError(
                    f"Mask {path} is an RGB colour image; expected a palette or grayscale PNG holding one "
                    "class id per pixel (map each colour to its class id first). "
                    f"Received: mode={mode!r}"
                )
            if mode == "LA":
                mask = mask.getchannel("L")
            array = np.asarray(mask)
    except FileNotFoundError:
        raise DataError(f"Mask file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise DataError(f"Cannot read mask file {path}: {error}") from None
    if array.ndim != 2:
        raise DataError(f"Mask {path} must be a single-channel image. Received: shape={array.shape}")
    if array.dtype != np.uint8:
        if array.size and (array.min() < 0 or array.max() > 255):
            raise DataError(
                f"Mask {path} holds values outside 0..255. Received: min={array.min()}, max={array.max()}"
            )
        array = array.astype(np.uint8)
    return array


def _read_mat_mask(path: str) -> np.ndarray:
    import scipy.io

    try:
        mat = scipy.io.loadmat(path)
        # SBD (and the reference's sbdd layer): mat['GTcls'][0]['Segmentation'][0]
        return np.asarray(mat["GTcls"][0]["Segmentation"][0], dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"Mask file not found: {path}") from None
    except (KeyError, IndexError, ValueError, TypeError, OSError) as error:
        raise DataError(f"Cannot read SBD mask {path} (expected GTcls.Segmentation): {error!r}") from None


def check_mask(mask: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    """Raises `DataError` naming `where` if `mask` is not a mask of class ids for `num_classes` classes.

    Errors: values outside `[0, num_classes)` other than 255; and a 0/255 binary mask, i.e. only the
    values 0 and 255 with 255 covering more than `VOID_FRACTION_LIMIT` of the pixels (VOC's 255 marks
    thin object outlines; a large 255 area means the foreground was stored as 255 and would be ignored).

    Returns:
        `mask`, unchanged.
    """
    if mask.dtype == np.uint8:  # a histogram: ~15x faster than np.unique's sort at 500x375
        counts = np.bincount(mask.ravel(), minlength=256)
        values = np.flatnonzero(counts)
        counts = counts[values]
    else:
        values, counts = np.unique(mask, return_counts=True)
    bad = values[(values >= num_classes) & (values != IGNORE_LABEL)]
    if bad.size:
        hint = ""
        if bad.size == 1 and bad[0] == num_classes:
            hint = f" Is num_classes off by one (should it be {num_classes + 1})?"
        raise DataError(
            f"Mask {where} has values outside [0, {num_classes}) that are not the ignore label 255.{hint} "
            f"Received: values={values.tolist()}"
        )
    if values.tolist() == [0, IGNORE_LABEL] and counts[1] > VOID_FRACTION_LIMIT * mask.size:
        raise DataError(
            f"Mask {where} looks like a 0/255 binary mask: {100 * counts[1] / mask.size:.0f}% of its pixels "
            "are 255, the ignore label. Store the foreground as class 1. "
            f"Received: values={values.tolist()}"
        )
    return mask


def check_sizes(image_size: tuple[int, int], mask_size: tuple[int, int], image_path: str, mask_path: str) -> None:
    """Raises `DataError` naming both files if the image and mask sizes `(H, W)` differ."""
    image_size, mask_size = tuple(int(n) for n in image_size), tuple(int(n) for n in mask_size)
    if image_size != mask_size:
        raise DataError(
            f"Image {image_path} and mask {mask_path} differ in size. "
            f"Received: image (H, W)={image_size}, mask (H, W)={mask_size}"
        )


def require_dir(path: str, what: str) -> str:
    """Returns `path` if it is a folder, else raises `DataError` saying what was expected there."""
    if not os.path.isdir(path):
        raise DataError(f"{what} folder not found: {path}")
    return path


def read_id_list(path: str) -> list[str]:
    """Reads a split file (one id per line, blank lines skipped); raises `DataError` if absent or empty."""
    if not os.path.isfile(path):
        raise DataError(f"Split list not found: {path}")
    with open(path, encoding="utf-8") as handle:
        ids = [line.strip().split()[0] for line in handle if line.strip()]
    if not ids:
        raise DataError(f"Split list is empty: {path}")
    return ids
