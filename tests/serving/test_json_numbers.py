"""The numeric fast path of REST `:predict` bodies against `json_codec` (the reference), and its memory bound."""

from __future__ import annotations

import contextlib
import json
import tracemalloc

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tensorflow.core.protobuf import meta_graph_pb2

from keras_fcn.serving.errors import ServingError
from keras_fcn.serving.wire import json_codec, json_numbers

# DataType enum values
FLOAT, DOUBLE, INT32, UINT8, INT16, INT8, STRING, INT64, BOOL, HALF = 1, 2, 3, 4, 5, 6, 7, 9, 10, 19
NUMERIC = [FLOAT, UINT8, INT32, DOUBLE, INT8, INT64]


def corpus(examples: int) -> settings:
    """A fixed corpus: the same bodies every run."""
    return settings(
        derandomize=True, database=None, deadline=None, max_examples=examples, suppress_health_check=list(HealthCheck)
    )


def infos(**dtypes) -> dict:
    return {alias: meta_graph_pb2.TensorInfo(dtype=dtype) for alias, dtype in dtypes.items()}


def reference(body: bytes, tensor_infos: dict):
    """json_codec's answer: (arrays, row_format), or the ServingError it raises."""
    try:
        return json_codec.predict_inputs(json_codec.parse_json(body), tensor_infos)
    except ServingError as error:
        return error


@contextlib.contextmanager
def chunk_bytes(size: int):
    """Small chunks, so that bodies of a few hundred bytes cross chunk boundaries."""
    saved = json_numbers.CHUNK_BYTES
    json_numbers.CHUNK_BYTES = size
    try:
        yield
    finally:
        json_numbers.CHUNK_BYTES = saved


def assert_same(fast, expected) -> None:
    """The fast path's arrays equal json_codec's: keys, row format, dtype, shape and bits (NaN, -0.0)."""
    assert not isinstance(expected, ServingError), f"json_codec refused the body ({expected}); the fast path did not"
    arrays, row_format = fast
    assert row_format == expected[1]
    assert list(arrays) == list(expected[0])
    for alias, array in arrays.items():
        want = expected[0][alias]
        assert (array.dtype, array.shape) == (want.dtype, want.shape)
        assert array.tobytes() == want.tobytes(), (array, want)


def check(body: bytes, tensor_infos: dict) -> bool:
    """Runs both paths; the fast one gives None or exactly the reference. True when it gave arrays."""
    expected = reference(body, tensor_infos)
    scanned = json_numbers.scan_predict_body(body)
    if scanned is not None:  # what the scan accepts parses, with the same signature name
        document = json_codec.parse_json(body)
        assert scanned.signature_name == json_codec.signature_name(document)
    fast = json_numbers.fast_predict_inputs(body, tensor_infos, 1 << 40)
    if fast is None:
        return False
    assert_same(fast, expected)
    return True


# --- generated bodies ------------------------------------------------------------------------------

VALID_NUMBER = r"-?(0|[1-9][0-9]{0,17})(\.[0-9]{1,8})?([eE][+-]?[0-9]{1,3})?"
NOT_NUMBERS = [
    "01", "-01", "00", "1.", ".5", "+1", "1e", "--1", "1.2.3", "1e5.2", "1e+-2", "1e5e5", "-", "-NaN", "nan",
    "inf", "Infinity1", "NaNa", "0x10", "1_0", "true", "null", '"1"', "{}", "[]", "1 2", "1,,2", "[1]", "٣",
]  # fmt: skip
NUMBER_KINDS = ["small", "pixels", "integers", "floats", "decimals", "literals", "mixed"]
WHITESPACE = ["", "", "", " ", "  ", "\n", "\t", "\r\n", "\f"]  # \f is not JSON whitespace


def numbers(kind: str) -> st.SearchStrategy[str]:
    """JSON number texts: small integers, any integers, Python float reprs, decimals, NaN and Infinity."""
    small = st.integers(-300, 300).map(str)
    strategies = {
        "small": small,
        "pixels": st.integers(0, 255).map(str),
        "integers": st.one_of(small, st.integers(-(1 << 70), 1 << 70).map(str)),
        "floats": st.one_of(*(st.floats(width=w, allow_nan=False, allow_infinity=False) for w in (32, 64))).map(repr),
        "decimals": st.one_of(
            st.from_regex(VALID_NUMBER, fullmatch=True),
            st.decimals(places=3, allow_nan=False, allow_infinity=False).map(str),
        ),
        "literals": st.sampled_from(["NaN", "Infinity", "-Infinity", "-0", "-0.0", "0", "1e400", "-1e-400"]),
    }
    if kind == "mixed":
        return st.one_of(*strategies.values())
    return strategies[kind]


@st.composite
def nested_text(draw, kind: str, plain: bool) -> str:
    """A nested array of number texts, rectangular, with random whitespace (and, unless plain, damage)."""
    shape = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    count = int(np.prod(shape))
    pool = draw(st.lists(numbers(kind), min_size=1, max_size=6))  # drawing every value would be slow
    rng = draw(st.randoms(use_true_random=False))
    tokens = [rng.choice(pool) for _ in range(count)]
    spaces = WHITESPACE[:-1] if plain else WHITESPACE

    def gap() -> str:
        return rng.choice(spaces) if rng.random() < 0.3 else ""

    def build(level: int, offset: int) -> str:
        if level == len(shape):
            return gap() + tokens[offset] + gap()
        step = int(np.prod(shape[level + 1 :]))
        items = [build(level + 1, offset + i * step) for i in range(shape[level])]
        if not plain and rng.random() < 0.1:
            damage = rng.choice(["drop", "deepen", "empty", "token"])
            index = rng.randrange(len(items))
            if damage == "drop" and len(items) > 1:
                del items[index]  # ragged
            elif damage == "deepen":
                items[index] = "[" + items[index] + "]"
            elif damage == "empty":
                items.append("[]")
            else:
                items[index] = rng.choice(NOT_NUMBERS)
        return gap() + "[" + ",".join(items) + "]" + gap()

    return build(0, 0)


@st.composite
def bodies(draw, plain: bool):
    """(body, tensor_infos): row or columnar bodies of one or two inputs, plain or with hostile changes."""
    kind = draw(st.sampled_from(["pixels", "small", "decimals", "floats"] if plain else list(NUMBER_KINDS)))
    layout = draw(st.sampled_from(["instances", "inputs", "object"]))
    if plain and kind == "pixels":
        dtype = draw(st.sampled_from([UINT8, FLOAT, INT32]))
    elif plain and kind == "small":
        dtype = draw(st.sampled_from([FLOAT, INT32, INT64, INT16]))
    elif plain:
        dtype = draw(st.sampled_from([FLOAT, DOUBLE]))
    else:
        dtype = draw(st.sampled_from(NUMERIC + [STRING, HALF, BOOL]))
    members = {}
    if draw(st.booleans()):
        names = ["", "serving_default", "s,[1]"] + ([] if plain else ["é", "a\\b"])  # escapes: json_codec's
        members["signature_name"] = json.dumps(draw(st.sampled_from(names)))
    if layout == "object":
        aliases = draw(st.lists(st.sampled_from(["a", "b", "images", "x y"]), min_size=1, max_size=3, unique=True))
        tensor_infos = infos(**{alias: dtype for alias in aliases})
        texts = [f'"{alias}": {draw(nested_text(kind, plain))}' for alias in aliases]
        members["inputs"] = "{" + ", ".join(texts) + "}"
    else:
        tensor_infos = infos(x=dtype)
        members[layout] = draw(nested_text(kind, plain))
    items = [f'"{key}": {value}' for key, value in members.items()]
    rng = draw(st.randoms(use_true_random=False))
    rng.shuffle(items)
    if not plain:
        for change in draw(st.lists(st.sampled_from(HOSTILE), max_size=2)):
            items = change(items, rng)
    lead, trail = (draw(st.sampled_from(WHITESPACE[:-1])) for _ in range(2))
    body = lead + "{" + ", ".join(items) + "}" + trail
    if not plain and draw(st.booleans()):
        body += draw(st.sampled_from([" trailing", "]", "\x00", "{", "é"]))
    return body.encode("utf-8"), tensor_infos


HOSTILE = [
    lambda items, rng: items + ['"extra": 1'],
    lambda items, rng: items + [items[0]] if items else items,  # a duplicate key
    lambda items, rng: items + ['"instances": [1]', '"inputs": [1]'],
    lambda items, rng: items + ['"signature_name": 7'],
    lambda items, rng: [item.replace('"inputs"', '"\\u0069nputs"') for item in items],
    lambda items, rng: [item.replace("]", ", true]", 1) if rng.random() < 0.5 else item for item in items],
    lambda items, rng: [item.replace("]", ', "s"]', 1) for item in items],
    lambda items, rng: [item.replace("]", ", null]", 1) for item in items],
    lambda items, rng: [item.replace("[", '[{"b64": "AA=="}, ', 1) for item in items],
    lambda items, rng: items[:1],
    lambda items, rng: [],
    lambda items, rng: [item + "," for item in items],
]


@corpus(200)
@given(bodies(plain=False), st.sampled_from([7, 16, 64, 1 << 18]))
@example((b'{"instances": [-0, -0.0, 0.0, 1e-400]}', infos(x=FLOAT)), 1 << 18)
@example((b'{"instances": [256, -1, 2147483647]}', infos(x=UINT8)), 1 << 18)
@example((b'{"instances": [2147483648]}', infos(x=UINT8)), 1 << 18)
@example((b'{"instances": [1e400]}', infos(x=FLOAT)), 1 << 18)
@example((b'{"instances": [9007199254740993, 1.5]}', infos(x=FLOAT)), 1 << 18)
@example((b'{"instances": [1e3]}', infos(x=INT32)), 1 << 18)
@example((b'{"inputs": {"a": [1], "b": [2], "c": [3]}}', infos(a=FLOAT, b=FLOAT)), 1 << 18)
@example((b'{"instances": [[1, 2], [3, [4]]]}', infos(x=FLOAT)), 1 << 18)
@example((b'{"instances": [[[1, 2]], [3, 4]]}', infos(x=FLOAT)), 7)
def test_fast_path_gives_none_or_exactly_the_reference(case, chunk):
    body, tensor_infos = case
    with chunk_bytes(chunk):
        check(body, tensor_infos)


@corpus(100)
@given(bodies(plain=True), st.sampled_from([64, 256, 1 << 18]))
def test_plain_numeric_bodies_take_the_fast_path(case, chunk):
    body, tensor_infos = case
    with chunk_bytes(chunk):
        assert check(body, tensor_infos), body[:200]


@pytest.mark.parametrize(
    ("body", "dtypes", "arrays", "row_format"),
    [
        (b'{"instances": [[1, 2], [3, 4]]}', {"x": UINT8}, {"x": np.uint8([[1, 2], [3, 4]])}, True),
        (b'{"instances": [300, -1]}', {"x": UINT8}, {"x": np.uint8([44, 255])}, True),  # int32, cast wrapping
        (
            b' {"signature_name": "s", "inputs": [[1.5, -0, -0.0], [1e3, NaN, -Infinity]]} trailing',
            {"x": FLOAT},
            {"x": np.float32([[1.5, 0, -0.0], [1000, np.nan, -np.inf]])},
            False,
        ),
        (
            b'{"instances": [-999999999999999999, 123456789012345678, -0, 7]}',
            {"x": INT64},
            {"x": np.int64([-999999999999999999, 123456789012345678, 0, 7])},
            True,
        ),
        (
            b'{"instances": [-0.5, 0.05, -0.000, 12.125, -3]}',
            {"x": FLOAT},
            {"x": np.float32([-0.5, 0.05, -0.0, 12.125, -3])},
            True,
        ),
        (b'{"inputs": {"b": [[0.1]], "a": [7]}}', {"a": INT32, "b": DOUBLE}, {"a": np.int32([7]), "b": [[0.1]]}, False),
    ],
)
def test_known_answers(body, dtypes, arrays, row_format):
    fast = json_numbers.fast_predict_inputs(body, infos(**dtypes), 100)
    assert fast is not None and fast[1] == row_format
    for alias, want in arrays.items():
        np.testing.assert_array_equal(fast[0][alias], want)
    assert_same(fast, reference(body, infos(**dtypes)))


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [[1, 2], [3]]}',  # ragged
        b'{"instances": [1, 2, 3], "extra": 1}',
        b'{"instances": [1], "instances": [2]}',
        b'{"instances": [1, true]}',
        b'{"instances": [1, 01]}',
        b'{"instances": []}',
        b'{"instances": [[]]}',
        b'{"inputs": 1}',
        b'{"signature_name": "\\u0073", "instances": [1]}',
        b'{"instances": [1]}\xff',
    ],
)
def test_unusual_bodies_go_to_json_codec(body):
    assert json_numbers.fast_predict_inputs(body, infos(x=FLOAT), 100) is None


@pytest.mark.parametrize("token", NOT_NUMBERS + ["1e5.5", "1.5e5.5", "-0.0", "1.5e-3", "0e0", "-Infinity", "NaN"])
@pytest.mark.parametrize("dtype", [FLOAT, INT32])
def test_each_token_alone_and_among_numbers(token, dtype):
    for text in (f"[{token}]", f"[1.5, {token}, 2]", f"[[1, -0.0], [{token}, 3]]", f"[1e2, {token}]"):
        body = f'{{"instances": {text}}}'.encode()
        check(body, infos(x=dtype))


@pytest.mark.parametrize(
    "text",
    [
        "[[1, 2], [3, 4, 5], [6]]",  # ragged, yet 6 values in arrays of 2
        "[[1, 2], 3, 4]",
        "[[1, 2], [[3], 4]]",
        "[[1, 2,], [3, 4]]",
        "[[1, 2], ][3, 4]]",
        "[[1, 2] [3, 4]]",
        "[[1, 2[, ]3, 4]]",  # right counts of brackets between the numbers, in the wrong order
        "[[1, 2], [3, 4]]]",
        "[[[1, 2], [3, 4]], [[5, 6], [7, 8]], [[9, 10], [11, 12]]]",
        "[[[1, 2], [3, 4]], [[5, 6], [7, 8]], [[9, 10]], [11, 12]]]",
        "[[[1, 2], [3, 4]], [[5, 6], [7, 8]], [[9, 10]], [[11, 12]]]",
    ],
)
@pytest.mark.parametrize("chunk", [8, 1 << 18])
def test_shapes_and_structure(text, chunk):
    with chunk_bytes(chunk):
        check(f'{{"instances": {text}}}'.encode(), infos(x=FLOAT))


def test_more_values_than_the_limit_are_refused_before_parsing():
    body = json.dumps({"inputs": {"a": [[1, 2, 3], [4, 5, 6]], "b": [7] * 6}}).encode()
    tensor_infos = infos(a=UINT8, b=UINT8)
    assert json_numbers.fast_predict_inputs(body, tensor_infos, 12) is not None
    with pytest.raises(ServingError) as caught:
        json_numbers.fast_predict_inputs(body, tensor_infos, 11)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "12 values" in caught.value.message and "limit is 11" in caught.value.message
    assert "--max_request_elements" in caught.value.message


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(',[{]} "\\'),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(",[{"), inner),
    max_leaves=20,
)


def scalars(value) -> int:
    if isinstance(value, list):
        return sum(scalars(v) for v in value)
    if isinstance(value, dict):
        return sum(scalars(v) for v in value.values())
    return 1


@corpus(100)
@given(json_values, st.sampled_from([None, 2, 0]))
def test_count_upper_bound_bounds_the_scalars_of_any_document(value, indent):
    body = json.dumps(value, indent=indent).encode()
    assert json_numbers.count_upper_bound(body) >= scalars(value)
    assert json_numbers.count_upper_bound(body + b" trailing") >= scalars(value)


@pytest.mark.parametrize("layout", ["instances", "inputs", "object"])
def test_count_upper_bound_is_exact_for_numeric_bodies(layout):
    image = np.arange(2 * 5 * 7 * 3).reshape(2, 5, 7, 3) % 256
    value = {"a": image.tolist(), "b": [[1]]} if layout == "object" else image.tolist()
    body = json.dumps({"signature_name": "serving_default", "inputs" if layout == "object" else layout: value})
    values = image.size + (layout == "object")
    # the signature name is a scalar value too; keys are not
    assert json_numbers.count_upper_bound(body.encode()) == values + 1
    assert json_numbers.scan_predict_body(body.encode()).values == values


def image_body(image: np.ndarray) -> bytes:
    """`{"instances": image}` for a (1, H, W, 3) uint8 image, written with numpy: 14 bytes a pixel, `[  7, 42,255],`."""
    _, height, width, _ = image.shape
    digits = np.stack([image // 100, image // 10 % 10, image % 10], -1) + ord("0")  # (1, H, W, 3, 3)
    digits[..., 0][image < 100] = ord(" ")  # leading blanks, not zeros: JSON whitespace
    digits[..., 1][image < 10] = ord(" ")
    pixels = np.full((height, width, 14), ord(","), np.uint8)
    pixels[..., 0], pixels[..., 12] = ord("["), ord("]")
    pixels[..., [1, 2, 3, 5, 6, 7, 9, 10, 11]] = digits[0].reshape(height, width, 9)
    pixels[:, -1, 13] = ord("]")  # the row ends
    rows = np.concatenate([np.full((height, 1), ord("["), np.uint8), pixels.reshape(height, -1)], 1)
    rows = np.concatenate([rows, np.full((height, 1), ord(","), np.uint8)], 1)
    return b'{"instances": [[' + rows.tobytes()[:-1] + b"]]}"


def test_image_bodies_cross_chunks_and_equal_the_reference():
    image = np.random.default_rng(1).integers(0, 256, (1, 40, 50, 3), dtype=np.uint8)
    body = image_body(image)
    assert json.loads(body) == {"instances": image.tolist()}
    for chunk in (100, 1000, 1 << 18):
        with chunk_bytes(chunk):
            assert check(body, infos(images=UINT8)) and check(body, infos(images=FLOAT))


def test_one_image_is_parsed_into_one_array_sized_buffer():
    # (1, 2000, 2000, 3) uint8: 12 M values in a 56 MB body; the result is 12 MB, chunk temporaries ~4 MB
    image = np.random.default_rng(0).integers(0, 256, (1, 2000, 2000, 3), dtype=np.uint8)
    body = image_body(image)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        arrays, row_format = json_numbers.fast_predict_inputs(body, infos(images=UINT8), image.size)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert row_format and np.array_equal(arrays["images"], image)
    assert peak <= 1.5 * image.nbytes, f"peak {peak / 1e6:.1f} MB for a {image.nbytes / 1e6:.1f} MB result"
