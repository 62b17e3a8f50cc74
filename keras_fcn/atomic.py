"""Files written whole or not at all: a temporary file beside the target, renamed onto it at the end.

A reader of the target (a server polling a folder, a notebook reloading a figure, a rerun after a kill)
sees the old file or the new one, never half of one; an error while writing leaves the old file as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

# Permissions of what is written: readable by everyone, as `open()` makes it under the usual umask
# (mkstemp's temporary files are private).
FILE_MODE = 0o644


@contextlib.contextmanager
def replacing(path: str) -> Iterator[str]:
    """Yields a temporary path beside `path` to write to; `path` is replaced by it when the block ends.

    The temporary name keeps every suffix of `path` (`.keras`, `.weights.h5`, `.png`), so writers that go
    by the extension (Keras, Pillow, matplotlib) behave as they would on `path`. If the block raises, the
    temporary file is removed and `path` is left as it was.

    Example:
    >>> with replacing("runs/fcn/final.keras") as tmp:  # doctest: +SKIP
    ...     model.save(tmp)
    """
    directory = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    suffix = name[name.index(".") :] if "." in name.lstrip(".") else ""
    fd, tmp = tempfile.mkstemp(prefix=f".{name.split('.')[0] or 'tmp'}-", suffix=suffix, dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes(path: str, data: bytes) -> None:
    """Writes `data` to `path` whole (see `replacing`)."""
    with replacing(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


def write_text(path: str, text: str) -> None:
    """Writes UTF-8 `text` to `path` whole (see `replacing`)."""
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
