"""Data sources on generated VOC, SBD, folder and TFDS data; each bad input gives an error naming the file."""

import os

import numpy as np
import pytest
import tensorflow as tf
from data_trees import example, make_folder, make_sbd, make_voc, save_palette_png
from PIL import Image

from keras_fcn import data


def tf_examples(source, **kwargs):
    return [(image.numpy(), mask.numpy()) for image, mask in source.dataset(**kwargs)]


def assert_same_examples(loaded, expected, image_atol):
    assert len(loaded) == len(expected)
    for (image, mask), (want_image, want_mask) in zip(loaded, expected, strict=True):
        assert image.dtype == np.uint8 and image.shape == want_image.shape
        np.testing.assert_array_equal(mask, want_mask)
        assert np.abs(image.astype(int) - want_image).mean() <= image_atol


def test_voc_reads_jpeg_and_palette_png(tmp_path):
    root = str(tmp_path / "VOC2012")
    arrays = make_voc(root, {"train": ["2007_000001", "2007_000002"], "val": ["2008_000003"]})
    train = data.voc(root, "train")
    assert len(train) == 2 and train.num_classes == 21 and train.class_names[15] == "person"
    expected = [arrays[i] for i in ("2007_000001", "2007_000002")]
    assert_same_examples(tf_examples(train), expected, image_atol=3.0)  # JPEG is lossy
    assert_same_examples(list(train), expected, image_atol=3.0)  # the Python path agrees
    assert 255 in tf_examples(train)[0][1]  # the void border survives as 255 (palette index, not colour)
    assert len(data.voc(root, "val")) == 1


def test_voc_seg11valid_is_the_reference_list(tmp_path):
    root = str(tmp_path / "VOC2012")
    make_voc(root, {"train": ["2007_000033"]})
    os.makedirs(os.path.join(root, "ImageSets/Segmentation"), exist_ok=True)
    source = data.voc(root, "seg11valid")
    ids = [os.path.basename(image)[:-4] for image, _ in source.pairs]
    assert len(ids) == 736 and len(set(ids)) == 736
    assert ids[0] == "2007_000033" and ids[-1] == "2011_003271"


def test_sbd_reads_mat_files(tmp_path):
    root = str(tmp_path / "dataset")
    arrays = make_sbd(root, {"train": ["a1", "a2", "a3"], "val": ["b1"]})
    train = data.sbd(root, "train")
    assert_same_examples(tf_examples(train), [arrays[i] for i in ("a1", "a2", "a3")], image_atol=3.0)
    assert len(data.sbd(root, "val")) == 1


@pytest.mark.parametrize("palette", [False, True])
def test_folder_pairs_by_name(tmp_path, palette):
    arrays = make_folder(str(tmp_path), ["x", "y", "z"], palette=palette)
    source = data.folder(str(tmp_path / "images"), str(tmp_path / "masks"), num_classes=4)
    assert_same_examples(tf_examples(source), [arrays[n] for n in "xyz"], image_atol=0)
    spec_source = data.from_spec(f"folder:{tmp_path}", num_classes=4)
    assert [p for p, _ in spec_source.pairs] == [p for p, _ in source.pairs]


def test_shuffled_file_source_is_a_permutation(tmp_path):
    make_folder(str(tmp_path), [f"n{i}" for i in range(6)])
    source = data.folder(str(tmp_path / "images"), str(tmp_path / "masks"), num_classes=4)
    plain = tf_examples(source)
    shuffled = tf_examples(source, shuffle=True, seed=3)
    key = lambda e: e[1].tobytes()
    assert sorted(map(key, plain)) == sorted(map(key, shuffled))
    assert [key(e) for e in tf_examples(source, shuffle=True, seed=3)] == [key(e) for e in shuffled]


# ---------------------------------------------------------------------------------------------------
# bad inputs: each error names the file
# ---------------------------------------------------------------------------------------------------
def test_missing_folders_and_empty_split(tmp_path):
    with pytest.raises(data.DataError, match="PASCAL VOC root folder not found: .*nowhere"):
        data.voc(str(tmp_path / "nowhere"))
    root = str(tmp_path / "VOC2012")
    make_voc(root, {"train": ["i1"]})
    open(os.path.join(root, "ImageSets/Segmentation/val.txt"), "w").close()
    with pytest.raises(data.DataError, match="Split list is empty: .*val.txt"):
        data.voc(root, "val")
    with pytest.raises(data.DataError, match="Split list not found: .*test.txt"):
        data.voc(root, "test")
    with pytest.raises(data.DataError, match="SBD cls folder not found"):
        os.makedirs(tmp_path / "sbd" / "img")
        data.sbd(str(tmp_path / "sbd"))
    with pytest.raises(data.DataError, match="Masks folder not found"):
        data.folder(str(tmp_path / "VOC2012" / "JPEGImages"), str(tmp_path / "nope"), num_classes=21)
    empty = tmp_path / "empty"
    os.makedirs(empty / "images")
    os.makedirs(empty / "masks")
    with pytest.raises(data.DataError, match="No images .* found in .*empty"):
        data.folder(str(empty / "images"), str(empty / "masks"), num_classes=2)


def error_from_both_paths(source, match):
    """The Python path raises DataError; the tf.data path raises an OpError carrying the same text."""
    with pytest.raises(data.DataError, match=match):
        source.check()
    with pytest.raises(tf.errors.OpError, match=match):
        tf_examples(source)


def test_unreadable_image_names_the_file(tmp_path):
    make_folder(str(tmp_path), ["good", "bad"])
    (tmp_path / "images" / "bad.png").write_bytes(b"not an image at all")
    source = data.folder(str(tmp_path / "images"), str(tmp_path / "masks"), num_classes=4)
    error_from_both_paths(source, r"Cannot read image file .*bad\.png")


def test_missing_image_and_missing_mask_name_the_file(tmp_path):
    make_voc(str(tmp_path), {"train": ["i1", "i2"]})
    os.remove(tmp_path / "JPEGImages" / "i2.jpg")
    error_from_both_paths(data.voc(str(tmp_path), "train"), r"Image file not found: .*i2\.jpg")
    make_folder(str(tmp_path / "f"), ["a", "b"])
    os.remove(tmp_path / "f" / "masks" / "b.png")
    with pytest.raises(data.DataError, match=r"No mask for image .*b\.png"):
        data.folder(str(tmp_path / "f" / "images"), str(tmp_path / "f" / "masks"), num_classes=4)


def test_size_mismatch_names_both_files(tmp_path):
    make_folder(str(tmp_path), ["a", "b"], size=(16, 24))
    Image.fromarray(np.zeros((10, 24), np.uint8), mode="L").save(tmp_path / "masks" / "b.png")
    source = data.folder(str(tmp_path / "images"), str(tmp_path / "masks"), num_classes=4)
    error_from_both_paths(source, r"Image .*b\.png and mask .*b\.png differ in size.*\(16, 24\).*\(10, 24\)")


@pytest.mark.parametrize(
    "case, values, match",
    [
        ("binary", [0, 255, 255], r"looks like a 0/255 binary mask: 67%.*Received: values=\[0, 255\]"),
        ("off_by_one", [0, 1, 2, 3, 4], r"off by one.*should it be 5.*Received: values=\[0, 1, 2, 3, 4\]"),
        ("wild", [0, 1, 77], r"outside \[0, 4\).*Received: values=\[0, 1, 77\]"),
    ],
)
def test_bad_mask_values_name_the_file_and_values(tmp_path, case, values, match):
    make_folder(str(tmp_path), ["ok", "broken"])
    mask = np.resize(np.asarray(values, np.uint8), (16, 24))
    save_palette_png(tmp_path / "masks" / "broken.png", mask)
    source = data.folder(str(tmp_path / "images"), str(tmp_path / "masks"), num_classes=4)
    error_from_both_paths(source, r"Mask .*broken\.png.*" + match)


def test_rgb_colour_mask_is_rejected(tmp_path):
    make_folder(str(tmp_path), ["c"])
    colours = np.zeros((16, 24, 3), np.uint8)
    colours[:, :12] = (128, 0, 0)  # VOC's aeroplane colour instead of its id
    Image.fromarray(colours).save(tmp_path / "masks" / "c.png")
    source = data.folder(str(tmp_path / "images"), str(tmp_path / "masks"), num_classes=4)
    error_from_both_paths(source, r"Mask .*c\.png is an RGB colour image.*Received: mode='RGB'")


def test_bad_mat_file_names_the_file(tmp_path):
    root = str(tmp_path / "dataset")
    make_sbd(root, {"train": ["m1"]})
    import scipy.io

    scipy.io.savemat(os.path.join(root, "cls", "m1.mat"), {"other": np.zeros((2, 2))})
    error_from_both_paths(data.sbd(root, "train"), r"Cannot read SBD mask .*m1\.mat")


# ---------------------------------------------------------------------------------------------------
# TFDS
# ---------------------------------------------------------------------------------------------------
def pet_examples(count, size=(12, 10)):
    rng = np.random.default_rng(4)
    out = []
    for i in range(count):
        trimap = rng.integers(1, 4, size=size + (1,)).astype(np.uint8)  # 1 pet, 2 background, 3 border
        image = rng.integers(0, 256, size=size + (3,)).astype(np.uint8)
        out.append({"image": image, "segmentation_mask": trimap, "species": i % 2, "label": i % 37,
                    "file_name": f"pet_{i}.jpg", "head_bbox": np.zeros(4, np.float32)})  # fmt: skip
    return out


def mocked_pets(examples):
    def as_dataset(self, split, *args, **kwargs):
        keys = ("image", "segmentation_mask", "species", "label", "file_name")
        return tf.data.Dataset.from_generator(
            lambda: ({k: e[k] for k in keys} for e in examples),
            output_signature={
                "image": tf.TensorSpec((None, None, 3), tf.uint8),
                "segmentation_mask": tf.TensorSpec((None, None, 1), tf.uint8),
                "species": tf.TensorSpec((), tf.int64),
                "label": tf.TensorSpec((), tf.int64),
                "file_name": tf.TensorSpec((), tf.string),
            },
        )

    import tensorflow_datasets as tfds

    return tfds.testing.mock_data(as_dataset_fn=as_dataset)


@pytest.mark.parametrize("pet_classes", ["binary", "species"])
def test_tfds_oxford_pet_trimap_mapping(pet_classes):
    examples = pet_examples(3)
    with mocked_pets(examples):
        source = data.tfds("oxford_iiit_pet", "train", pet_classes=pet_classes)
        loaded = tf_examples(source)
    assert source.num_classes == (2 if pet_classes == "binary" else 3)
    for (image, mask), ex in zip(loaded, examples, strict=True):
        trimap = ex["segmentation_mask"][..., 0]
        pet = 1 if pet_classes == "binary" else 1 + ex["species"]
        expected = np.select([trimap == 1, trimap == 2, trimap == 3], [pet, 0, 255])
        np.testing.assert_array_equal(image, ex["image"])
        np.testing.assert_array_equal(mask, expected)


def test_tfds_generic_keys_and_random_mock_errors():
    import tensorflow_datasets as tfds

    # The stock random mock draws mask and image sizes independently: a clear size error.
    with tfds.testing.mock_data(num_examples=2):
        source = data.tfds("oxford_iiit_pet", "train")
        with pytest.raises(tf.errors.OpError, match="differ in size"):
            tf_examples(source)
    with mocked_pets(pet_examples(2)):
        with pytest.raises(data.DataError, match="has no feature 'mask'"):
            data.tfds("oxford_iiit_pet", "train", mask_key="mask").dataset()
        # Any dataset with an image and a mask feature: here the raw trimap with 4 classes.
        raw = data.tfds("oxford_iiit_pet", "train", mask_key="segmentation_mask", value_map={},
                        num_classes=4)  # fmt: skip
        raw.value_map = None
        masks = [m for _, m in tf_examples(raw)]
        assert set(np.unique(np.concatenate([m.ravel() for m in masks]))) == {1, 2, 3}
        raw.num_classes = 3
        with pytest.raises(tf.errors.OpError, match=r"outside \[0, 3\).*Received: values=\[1, 2, 3\]"):
            tf_examples(raw)


def test_tfds_examples_are_shuffled_each_epoch_and_seeded():
    examples = pet_examples(12)
    ids = {ex["image"].tobytes(): i for i, ex in enumerate(examples)}

    def epochs(dataset, count):
        return [[ids[image[0].numpy().astype(np.uint8).tobytes()] for image, _ in dataset] for _ in range(count)]

    with mocked_pets(examples):  # one generator, like one TFDS file: only a buffer shuffle mixes it
        source = data.tfds("oxford_iiit_pet", "train")
        settings = {"batch_size": 1, "augment_data": False, "cache": False, "seed": 3}
        first, second = epochs(data.make_dataset(source, **settings), 2)
        (again,) = epochs(data.make_dataset(source, **settings), 1)
        (unshuffled,) = epochs(data.make_dataset(source, shuffle=False, **settings), 1)
    assert sorted(first) == sorted(second) == list(range(12))
    assert first != second  # reshuffled every epoch
    assert first == again  # the same order for the same seed
    assert first != list(range(12)) and unshuffled == list(range(12))


def test_tfds_shard_reads_an_even_slice_of_the_split():
    import tensorflow_datasets as tfds

    examples = pet_examples(6)
    splits = []

    def as_dataset(self, split, *args, **kwargs):
        splits.append(split)
        return tf.data.Dataset.from_tensor_slices({"image": np.stack([e["image"] for e in examples]),
                                                   "segmentation_mask": np.stack([e["segmentation_mask"]
                                                                                  for e in examples])})  # fmt: skip

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        source = data.tfds("oxford_iiit_pet", "train[:50%]")
        source.dataset(shard=(1, 3))
    # TFDS itself reads the slice, before decoding; the mock only sees which one was asked for.
    assert splits == [tfds.even_splits("train[:50%]", n=3)[1]]


# ---------------------------------------------------------------------------------------------------
# synthetic data and specs
# ---------------------------------------------------------------------------------------------------
def test_synthetic_is_seeded_and_has_every_class():
    a = data.synthetic(num_examples=40, image_size=(48, 40), seed=5)
    b = data.synthetic(num_examples=40, image_size=(48, 40), seed=5)
    c = data.synthetic(num_examples=40, image_size=(48, 40), seed=6)
    image, mask = a.load(3)
    assert image.shape == (48, 40, 3) and image.dtype == np.uint8 and mask.shape == (48, 40)
    np.testing.assert_array_equal(image, b.load(3)[0])
    assert not np.array_equal(image, c.load(3)[0])
    labels = np.concatenate([a.load(i)[1].ravel() for i in range(40)])
    assert set(np.unique(labels)) == set(range(a.num_classes))
    # through tf.data, in parallel, the same examples in the same order
    for (tf_image, tf_mask), i in zip(a.dataset(), range(40), strict=False):
        np.testing.assert_array_equal(tf_mask.numpy(), a.load(i)[1])
        np.testing.assert_array_equal(tf_image.numpy(), a.load(i)[0])
    with pytest.raises(ValueError, match="Received: num_classes=12"):
        data.synthetic(num_classes=12)


def test_spec_strings():
    train = data.from_spec("synthetic:12", "train")
    val = data.from_spec("synthetic:12", "val")
    assert len(train) == 12 and train.seed != val.seed
    assert not np.array_equal(train.load(0)[0], val.load(0)[0])
    with pytest.raises(ValueError, match="Received: spec='csv:x'"):
        data.from_spec("csv:x")
    with pytest.raises(ValueError, match="needs a location"):
        data.from_spec("voc")


def test_example_helper_is_consistent():
    image, mask = example(np.random.default_rng(0), (9, 9), 5)
    assert image.shape == (9, 9, 3) and mask.shape == (9, 9)


def test_synthetic_split_seed_does_not_depend_on_the_hash_seed():
    import subprocess
    import sys
    import zlib

    code = (
        "from keras_fcn import data; s = data.from_spec('synthetic:2', 'holdout', seed=5); "
        "print(s.seed, int(s.load(1)[0].astype('int64').sum()))"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    printed = [
        subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONHASHSEED": hash_seed}, check=True,
                       capture_output=True, text=True).stdout.split()  # fmt: skip
        for hash_seed in ("1", "2")
    ]
    assert printed[0] == printed[1]
    assert int(printed[0][0]) == 5 + zlib.crc32(b"holdout") % 1_000_000
