"""keras_fcn.atomic: the target holds the old file or the whole new one, never part of one."""

import os
import stat

import pytest

from keras_fcn.atomic import replacing, write_bytes, write_text


def test_the_new_file_replaces_the_old_one_whole(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("old\n")
    with replacing(str(path)) as tmp:
        with open(tmp, "w") as handle:
            handle.write("new\n")
        assert path.read_text() == "old\n"  # nothing visible before the block ends
    assert path.read_text() == "new\n"
    assert os.listdir(tmp_path) == ["classes.txt"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


def test_an_error_while_writing_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "final.keras"
    path.write_bytes(b"old model")
    with pytest.raises(RuntimeError, match="disk full"):
        with replacing(str(path)) as tmp:
            with open(tmp, "wb") as handle:
                handle.write(b"half a mod")
            raise RuntimeError("disk full")
    assert path.read_bytes() == b"old model"
    assert os.listdir(tmp_path) == ["final.keras"]


@pytest.mark.parametrize("name", ["final.keras", "vgg16.weights.h5", "m.classes.txt", "curves.png", "noext"])
def test_the_temporary_keeps_every_suffix_beside_the_target(tmp_path, name):
    # Keras insists on `.keras` and `.weights.h5`; Pillow and matplotlib pick the format by extension.
    with replacing(str(tmp_path / name)) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path)
        suffix = name[name.index(".") :] if "." in name else ""
        assert tmp.endswith(suffix) and os.path.basename(tmp).startswith(".")
    assert os.path.exists(tmp_path / name)


def test_write_text_and_bytes(tmp_path):
    write_text(str(tmp_path / "a.json"), '{"é": 1}\n')
    write_bytes(str(tmp_path / "b.png"), b"\x89PNG")
    assert (tmp_path / "a.json").read_text(encoding="utf-8") == '{"é": 1}\n'
    assert (tmp_path / "b.png").read_bytes() == b"\x89PNG"
    assert sorted(os.listdir(tmp_path)) == ["a.json", "b.png"]
