"""REST `:predict` bodies of plain numbers parsed straight into numpy, beside `json_codec`'s general path.

Python's `json` builds one Python object per number (~32 bytes each, and `json_codec.to_array` makes
more copies): a 290 MB body of a 1x6000x6000x3 image cost tens of GB. This module reads the common
bodies, `{"signature_name": "...", "instances": [[...]]}` or `{"inputs": [[...]]}` / `{"inputs":
{alias: [[...]], ...}}` of JSON numbers only, with numpy over fixed-size chunks of the body:

1. `scan_predict_body` checks the top-level object, and for each nested array of numbers its JSON
   syntax, its shape (every array at a depth of the same length) and its number of values, without
   building any array (chunk temporaries only, a few MB).
2. `PredictBody.inputs` refuses more than `--max_request_elements` values, then allocates each
   result once and parses the numbers into it chunk by chunk.

Whatever is unusual (strings, b64, booleans, null, escapes in keys, extra or duplicate keys, ragged
or empty arrays, non-ASCII bytes, dtypes other than float/int ones, numbers an integer tensor does
not take) gives None, and the caller runs `json_codec`, which keeps TF Serving's error texts: where
this module returns arrays they equal `json_codec.predict_inputs(json_codec.parse_json(body), ...)`
in dtype, shape and bits.
"""

from __future__ import annotations

import dataclasses
import re

import grpc
import numpy as np
import tensorflow as tf

from ..errors import ServingError

CHUNK_BYTES = 1 << 18  # body bytes per numpy step: temporaries stay a few MB whatever the body's size
MAX_RANK = 64  # as json_codec (numpy holds at most 64 dimensions)

# Byte classes. Structure: whitespace (as Python's json: space, tab, LF, CR), brackets, comma.
# Number characters (runs of them are tokens): 1-9, 0, '-', '+', '.', 'e'/'E', letters of NaN/Infinity.
_WS, _OPEN, _CLOSE, _COMMA, _D, _Z, _S, _X, _P, _E, _L, _BAD = range(12)
_NUMBER = _D  # classes >= _D and < _BAD are number characters
_CLASS = np.full(256, _BAD, np.uint8)
_CLASS[list(b" \t\n\r")] = _WS
_CLASS[ord("[")], _CLASS[ord("]")], _CLASS[ord(",")] = _OPEN, _CLOSE, _COMMA
_CLASS[list(b"123456789")] = _D
_CLASS[ord("0")], _CLASS[ord("-")], _CLASS[ord("+")], _CLASS[ord(".")] = _Z, _S, _X, _P
_CLASS[list(b"eE")] = _E
_CLASS[list(b"NaInfity")] = _L
_DEPTH = np.zeros(256, np.int8)
_DEPTH[ord("[")], _DEPTH[ord("]")] = 1, -1
# numpy's text reader takes the numbers once brackets are blanks (commas stay the separators)
_BLANK_BRACKETS = np.arange(256, dtype=np.uint8)
_BLANK_BRACKETS[[ord("["), ord("]")]] = ord(" ")


def _pairs() -> np.ndarray:
    """Which byte class may follow which (prev * 12 + cur), as JSON's number grammar has it pairwise.

    What pairs cannot say is checked apart: one '.' and one 'e' a number, '.' before 'e', no leading
    zero, and letters only as whole `NaN`, `Infinity`, `-Infinity`.
    """
    structure, digits = [_WS, _OPEN, _CLOSE, _COMMA], [_D, _Z]
    allowed = {
        **dict.fromkeys(structure, structure + digits + [_L]),  # a number ends on a digit or a literal's letter
        _S: structure + [_E],  # a sign opens a number or its exponent
        _X: [_E],
        _D: structure + [_S, _X, _D, _Z, _P, _E],
        _Z: structure + [_S, _X, _D, _Z, _P, _E],
        _P: digits,
        _E: digits,
        _L: structure + [_S, _L],
    }
    table = np.zeros(12 * 12, bool)
    for cur, prevs in allowed.items():
        table[np.array(prevs) * 12 + cur] = True
    return table


_PAIR = _pairs()
# Which structure token may follow which (prev * 5 + cur): '[' -> '[' or a number, a number or ']' -> ']' or
# ',', ',' -> '[' or a number. No empty arrays (TF Serving's shapes of them are json_codec's to give).
_TOKEN_PAIR = np.zeros(5 * 5, bool)
_TOKEN_PAIR[[_OPEN * 5 + _OPEN, _OPEN * 5 + _D, _D * 5 + _CLOSE, _D * 5 + _COMMA]] = True
_TOKEN_PAIR[[_CLOSE * 5 + _CLOSE, _CLOSE * 5 + _COMMA, _COMMA * 5 + _OPEN, _COMMA * 5 + _D]] = True

_WHITESPACE = re.compile(rb"[ \t\n\r]*")
_PLAIN_STRING = re.compile(rb'"([^"\\\x00-\x1f]*)"')  # a string without escapes or control characters
_INF_LITERAL = np.frombuffer(b"Infinity", np.uint8)
_NAN_LITERAL = np.frombuffer(b"NaN", np.uint8)
_MAX_TOKEN = 300  # longer numbers are past float64 (or not worth a fast path)
_MAX_FAST_DIGITS = 15  # up to 15 digits a decimal mantissa is exact in float64 (Clinger's fast path)
_POW10 = 10.0 ** np.arange(23)  # exact in float64
# Integer tensors TF Serving reads through int32 (and casts, wrapping), or int64.
_INT_BOUNDS = {
    tf.int8: (-(1 << 31), 1 << 31),
    tf.int16: (-(1 << 31), 1 << 31),
    tf.int32: (-(1 << 31), 1 << 31),
    tf.uint8: (-(1 << 31), 1 << 31),
    tf.int64: None,  # any 18-digit integer fits
}


def count_upper_bound(body: bytes) -> int:
    """An upper bound on the number of JSON scalar values in `body`: its commas + 1, one `bytes.count`.

    Why it bounds: let a document hold C containers (arrays, objects), E of them empty. A container
    of k >= 1 elements (array items, member values) has k - 1 commas, so all containers together
    hold commas + C - E elements. Every element is a scalar or a container, and every container but
    the top-level one is an element: commas + C - E = scalars + C - 1, so scalars = commas + 1 - E.
    (A scalar document: 1 value, 0 commas.) Object keys are not values. It over-counts by E, by
    commas inside strings and by commas after the document (TF Serving reads the first value only);
    for an array of numbers without empty arrays it is exact. So refuse nothing on it alone: under
    a limit it spares the exact count, over it calls for one (`scan_predict_body(...).values` for
    a numeric body). A 290 MB body takes about 0.1 s and no memory.

    Args:
        body: any request body.

    Returns:
        An integer >= the number of scalar values of any JSON document `body` starts with.
    """
    return body.count(b",") + 1


def too_many_values(total: int, shapes: str, max_elements: int) -> ServingError:
    """The INVALID_ARGUMENT of `tensors.check_request_size`, for a REST body (shapes as text)."""
    return ServingError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"request too large: its tensors declare {total} values ({shapes}); the limit is {max_elements} "
        "values a request (--max_request_elements)",
    )


@dataclasses.dataclass
class _Tensor:
    """One nested array of numbers in the body, as the scan found it."""

    shape: tuple
    chunks: list  # (start, stop, values) of each chunk: body offsets, cut after a comma or at the array's end
    integers_only: bool  # no '.', exponent or NaN/Infinity anywhere
    max_token: int  # the longest number's length in bytes

    @property
    def size(self) -> int:
        return sum(count for _, _, count in self.chunks)


@dataclasses.dataclass
class PredictBody:
    """A `:predict` body the scan accepted: its signature name, format and nested arrays (not parsed yet)."""

    body: bytes
    signature_name: str
    row_format: bool
    tensors: dict  # alias (None: the body's single unnamed tensor) -> _Tensor

    @property
    def values(self) -> int:
        """The number of values all tensors hold together."""
        return sum(t.size for t in self.tensors.values())

    def check_size(self, max_elements: int) -> None:
        """Raises the `--max_request_elements` INVALID_ARGUMENT when the tensors hold more values."""
        if self.values > max_elements:
            unnamed = "instances" if self.row_format else "inputs"
            shapes = ", ".join(f"'{alias or unnamed}' {list(t.shape)}" for alias, t in self.tensors.items())
            raise too_many_values(self.values, shapes, max_elements)

    def inputs(self, tensor_infos, max_elements: int) -> tuple[dict, bool] | None:
        """The arrays `json_codec.predict_inputs` would give, or None where it would not (or might not).

        Args:
            tensor_infos: the signature's inputs (alias -> TensorInfo).
            max_elements: the most values the body may hold (`--max_request_elements`).

        Returns:
            ({alias: array}, row_format), or None: then run `json_codec`, which words the error.

        Raises:
            ServingError: INVALID_ARGUMENT when the body holds more than `max_elements` values,
                before any array is allocated.
        """
        self.check_size(max_elements)
        dtypes = {alias: tf.dtypes.as_dtype(info.dtype) for alias, info in tensor_infos.items()}
        if None in self.tensors:  # `instances` or a plain `inputs`: a single-input signature only
            if len(dtypes) != 1:
                return None
            named = {next(iter(dtypes)): self.tensors[None]}
        else:
            if set(self.tensors) != set(dtypes):
                return None
            named = self.tensors
        arrays = {}
        for alias in sorted(named):
            array = _parse(self.body, named[alias], dtypes[alias])
            if array is None:
                return None
            arrays[alias] = array
        return arrays, self.row_format


def fast_predict_inputs(body: bytes, tensor_infos, max_elements: int) -> tuple[dict, bool] | None:
    """`json_codec.predict_inputs(json_codec.parse_json(body), tensor_infos)` for plain numeric bodies, or None.

    A shortcut for callers that know the signature already; `scan_predict_body` gives the
    signature name first.

    Example:
        >>> infos = {"x": meta_graph_pb2.TensorInfo(dtype=types_pb2.DT_UINT8)}
        >>> fast_predict_inputs(b'{"instances": [[1, 2], [3, 4]]}', infos, 1000)
        ({'x': array([[1, 2], [3, 4]], dtype=uint8)}, True)
    """
    scanned = scan_predict_body(body)
    return None if scanned is None else scanned.inputs(tensor_infos, max_elements)


def scan_predict_body(body: bytes) -> PredictBody | None:
    """The structure of a plain numeric `:predict` body, checked as JSON, or None for any other body.

    Accepted: an object with an optional string `signature_name` and exactly one of `instances`
    (a nested array of numbers) or `inputs` (one, or an object of them); whitespace anywhere JSON
    allows it; any bytes after the object (TF Serving reads the first value only) as long as the
    whole body is ASCII. Nothing is parsed into numbers here; a 290 MB body takes a few seconds
    and a few MB.

    Args:
        body: a request body.

    Returns:
        A PredictBody, or None: then `json_codec.parse_json` decides (and words any error).
    """
    if not body.isascii():  # the general path decodes the whole body as UTF-8
        return None
    data = np.frombuffer(body, np.uint8)
    position = _skip(body, 0)
    if body[position : position + 1] != b"{":
        return None
    members: dict = {}
    position = _skip(body, position + 1)
    while True:
        key = _PLAIN_STRING.match(body, position)
        if key is None or key.group(1) in members:
            return None
        name = key.group(1)
        position = _skip(body, key.end())
        if body[position : position + 1] != b":":
            return None
        position = _skip(body, position + 1)
        if name == b"signature_name":
            value = _PLAIN_STRING.match(body, position)
            if value is None:
                return None
            members[name], position = value.group(1).decode("ascii"), value.end()
        elif name == b"instances" or (name == b"inputs" and body[position : position + 1] == b"["):
            members[name], position = _scan_array(data, body, position)
        elif name == b"inputs":
            members[name], position = _scan_object(data, body, position)
        else:
            return None
        if members[name] is None:
            return None
        position = _skip(body, position)
        separator = body[position : position + 1]
        position = _skip(body, position + 1)
        if separator == b"}":
            break
        if separator != b",":
            return None
    if (b"instances" in members) == (b"inputs" in members):
        return None
    signature = members.get(b"signature_name", "")
    if b"instances" in members:
        return PredictBody(body, signature, True, {None: members[b"instances"]})
    tensors = members[b"inputs"]
    return PredictBody(body, signature, False, tensors if isinstance(tensors, dict) else {None: tensors})


def _skip(body: bytes, position: int) -> int:
    return _WHITESPACE.match(body, position).end()


def _scan_object(data: np.ndarray, body: bytes, position: int) -> tuple[dict | None, int]:
    """`{alias: nested array, ...}` (at least one member, plain keys, no duplicates) -> ({alias: _Tensor}, end)."""
    if body[position : position + 1] != b"{":
        return None, position
    tensors: dict = {}
    position = _skip(body, position + 1)
    while True:
        key = _PLAIN_STRING.match(body, position)
        if key is None or key.group(1).decode("ascii") in tensors:
            return None, position
        position = _skip(body, key.end())
        if body[position : position + 1] != b":":
            return None, position
        tensor, position = _scan_array(data, body, _skip(body, position + 1))
        if tensor is None:
            return None, position
        tensors[key.group(1).decode("ascii")] = tensor
        position = _skip(body, position)
        separator = body[position : position + 1]
        position = _skip(body, position + 1)
        if separator == b"}":
            return tensors, position
        if separator != b",":
            return None, position


def _scan_array(data: np.ndarray, body: bytes, position: int) -> tuple[_Tensor | None, int]:
    """Checks the nested array of numbers at `position`; (its _Tensor, the offset after it) or (None, _).

    Each chunk ends just after a comma (so no number spans two) or at the array's closing bracket.
    Within a chunk the tokens after whitespace is dropped read `(O* N C* M)*`, with O '[', N a
    number, C ']', M ','; for a rectangular array of rank D the k-th number is preceded by as many
    '[' as the (k-1)-th is followed by ']', the first by D, and the k-th is followed by one ']' for
    each level whose size divides k + 1: checking exactly that proves the shape.
    """
    if body[position : position + 1] != b"[":
        return None, position
    depth, carried_closes = 0, None  # carried_closes: ']' after the last number so far
    rank, sizes = None, {}  # sizes[level]: values in one array at that level (level 1: the whole array)
    counted, chunks, integers_only, max_token = 0, [], True, 0
    start = position
    while True:
        window = data[start : start + CHUNK_BYTES]
        # the depth after each bracket: the array ends at the first bracket that brings it to 0
        brackets = np.flatnonzero((window == ord("[")) | (window == ord("]")))
        depths = np.cumsum(_DEPTH.take(window[brackets]), dtype=np.int32)
        depths += depth
        closed = depths <= 0
        last = bool(closed.any())
        if last:
            stop = start + int(brackets[closed.argmax()]) + 1
        else:
            stop = body.rfind(b",", start, start + len(window)) + 1
            if stop <= start or start + len(window) >= len(body):
                return None, position  # no comma in a whole chunk, or the body ends inside the array
            before = int(np.searchsorted(brackets, stop - start))  # brackets in the chunk
            depth = int(depths[before - 1]) if before else depth
        chunk = data[start:stop]
        classes = _CLASS.take(chunk)
        previous = np.empty_like(classes)
        previous[0], previous[1:] = _COMMA, classes[:-1]  # a chunk starts after a comma (or is the first)
        if not _PAIR.take(previous * 12 + classes).all():  # also refuses _BAD bytes: no pair allows them
            return None, position
        tokens = _numbers(chunk, classes, previous)
        if tokens is None:
            return None, position
        starts, has_float, longest = tokens
        integers_only &= not has_float
        max_token = max(max_token, longest)
        # the structure tokens: drop whitespace and all but the first byte of each number
        kept = classes[(classes != _WS) & ~((classes >= _NUMBER) & (previous >= _NUMBER))]
        kept = np.minimum(kept, _D)  # numbers -> _D
        token_pairs = np.empty_like(kept)
        token_pairs[0], token_pairs[1:] = _COMMA, kept[:-1]  # a chunk starts after a comma (or is the first)
        if not _TOKEN_PAIR.take(token_pairs * 5 + kept).all():
            return None, position
        numbers, commas = np.flatnonzero(kept == _D), np.flatnonzero(kept == _COMMA)
        if len(numbers) != len(commas) + last:
            return None, position
        if not len(numbers):
            return None, position
        # '[' before each number, ']' after each
        opens = np.empty(len(numbers), np.int64)
        opens[0] = numbers[0]
        opens[1:] = numbers[1:] - commas[: len(numbers) - 1] - 1
        closes = np.empty(len(numbers), np.int64)
        closes[: len(commas)] = commas - numbers[: len(commas)] - 1
        if last:
            closes[-1] = len(kept) - numbers[-1] - 1
        if rank is None:
            rank = int(opens[0])
            if rank > MAX_RANK:
                return None, position
        elif opens[0] != carried_closes:
            return None, position
        if not np.array_equal(opens[1:], closes[:-1]):
            return None, position
        carried_closes = int(closes[-1])
        # sizes of the levels first closed in this chunk: level j ends where rank - j + 1 ']' follow
        for level in range(rank, 0, -1):
            if level in sizes:
                continue
            ends = np.flatnonzero(closes >= rank - level + 1)
            if not len(ends):
                break
            size = counted + int(ends[0]) + 1
            if level < rank and size % sizes[level + 1]:
                return None, position
            sizes[level] = size
        expected = np.zeros(len(numbers), np.int16)
        for size in sizes.values():
            expected[(-(counted + 1)) % size :: size] += 1
        if not np.array_equal(closes, expected):
            return None, position
        counted += len(numbers)
        chunks.append((start, stop, len(numbers)))
        start = stop
        if last:
            break
    shape = tuple(sizes[level] // sizes.get(level + 1, 1) for level in range(1, rank + 1))
    return _Tensor(shape, chunks, integers_only, max_token), stop


def _numbers(chunk: np.ndarray, classes: np.ndarray, previous: np.ndarray):
    """Checks the number tokens of a chunk beyond the pair rules; (token starts, any non-integer, longest).

    Returns None where a token is not a JSON number: two '.' or two 'e', a '.' after the 'e', a
    leading zero (`01`, `-01`), letters other than whole `NaN`, `Infinity`, `-Infinity`.
    """
    number = classes >= _NUMBER
    first = number & (previous < _NUMBER)
    starts = np.flatnonzero(first)
    following = np.empty_like(number)
    following[:-1], following[-1] = number[1:], False
    ends = np.flatnonzero(number & ~following) + 1  # exclusive
    longest = int((ends - starts).max()) if len(starts) else 0
    # leading zeros: a '0' that opens the integer part and is followed by a digit
    digit_next = np.zeros_like(number)
    digit_next[:-1] = (classes[1:] == _D) | (classes[1:] == _Z)
    signed_start = np.zeros_like(number)
    signed_start[1:] = first[:-1] & (classes[:-1] == _S)
    if ((classes == _Z) & (first | signed_start) & digit_next).any():
        return None
    dots, exponents = np.flatnonzero(classes == _P), np.flatnonzero(classes == _E)
    letters = np.flatnonzero(classes == _L)
    has_float = bool(len(dots) or len(exponents) or len(letters))
    if has_float:
        dot_token = np.searchsorted(starts, dots, "right") - 1
        exponent_token = np.searchsorted(starts, exponents, "right") - 1
        if (np.diff(dot_token) <= 0).any() or (np.diff(exponent_token) <= 0).any():
            return None  # two '.' or two 'e' in one number
        both = np.searchsorted(exponent_token, dot_token)
        both = np.minimum(both, max(len(exponent_token) - 1, 0))
        if len(exponents) and ((exponent_token[both] == dot_token) & (exponents[both] < dots)).any():
            return None  # '.' after the exponent
    if len(letters) and not _literals_ok(chunk, classes, starts, len(letters)):
        return None
    # Python's json refuses numbers past float64 ("Number too big to be stored in double"): a body the
    # scan accepts must parse, so such numbers (only with an exponent or 300+ digits) go to json_codec.
    if longest > _MAX_TOKEN:
        return None
    if len(exponents):
        values = _read(_text(chunk), np.float64, len(starts))
        if values is None or np.isinf(values).sum() != _infinities(chunk, starts):
            return None
    return starts, has_float, longest


def _infinities(chunk: np.ndarray, starts: np.ndarray) -> int:
    """How many of the numbers starting at `starts` are `Infinity` or `-Infinity`."""
    return int(np.count_nonzero(chunk[starts] == ord("I")) + np.count_nonzero(chunk[starts + 1] == ord("I")))


def _literals_ok(chunk: np.ndarray, classes: np.ndarray, starts: np.ndarray, letters: int) -> bool:
    """Whether the chunk's letters are exactly whole `NaN`, `Infinity` and `-Infinity` tokens."""
    padded = np.concatenate([chunk, np.zeros(8, np.uint8)])
    signed = starts[(chunk[starts] == ord("-")) & (classes[starts + 1] == _L)]
    infinity = np.concatenate([starts[chunk[starts] == ord("I")], signed + 1])
    nan = starts[chunk[starts] == ord("N")]
    found = 0
    for positions, literal in ((infinity, _INF_LITERAL), (nan, _NAN_LITERAL)):
        if not len(positions):
            continue
        spans = padded[positions[:, None] + np.arange(len(literal) + 1)]
        if not (spans[:, :-1] == literal).all() or (_CLASS[spans[:, -1]] >= _NUMBER).any():
            return False
        found += len(positions) * len(literal)
    # each match covers its letters only once; any other letter is left over
    return found == letters


def _parse(body: bytes, tensor: _Tensor, dtype: tf.DType) -> np.ndarray | None:
    """The values of a scanned array as a `dtype` array, or None where json_codec would not give them."""
    floating = dtype in (tf.float32, tf.float64)
    if not floating:
        if dtype not in _INT_BOUNDS or not tensor.integers_only or tensor.max_token > 19:
            return None  # 18 digits and a sign sum exactly in int64; longer ones are out of any range here
        bounds = _INT_BOUNDS[dtype]
    result = np.empty(tensor.size, dtype.as_numpy_dtype)  # the one array-sized buffer, (values,)
    data = np.frombuffer(body, np.uint8)
    done = 0
    for start, stop, count in tensor.chunks:
        chunk = data[start:stop]
        if floating:
            values = _floats(chunk, count)
        else:
            values = _integers(chunk, count)
            if values is not None and bounds and (values.min() < bounds[0] or values.max() >= bounds[1]):
                values = None
        if values is None:
            return None
        with np.errstate(over="ignore"):  # beyond float32: +-inf, as json_codec's cast; integers wrap as TF's
            result[done : done + count] = values.astype(result.dtype, casting="unsafe", copy=False)
        done += count
    return result.reshape(tensor.shape)


def _text(chunk: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """The chunk with brackets blanked (and only `keep` bytes), ending without a comma: numpy's text input."""
    text = _BLANK_BRACKETS.take(chunk)
    if keep is not None:
        text = text[keep]
    if text[-1] == ord(","):
        text[-1] = ord(" ")  # numpy reads a trailing separator as one more value (0)
    return text


def _read(text: np.ndarray, dtype, count: int) -> np.ndarray | None:
    try:
        values = np.fromstring(text, dtype=dtype, sep=",")
    except (ValueError, DeprecationWarning):
        return None
    return values if len(values) == count else None


def _integers(chunk: np.ndarray, count: int) -> np.ndarray | None:
    """JSON integers (checked by the scan: digits and a leading '-', at most 18 digits) -> int64 (values,)."""
    number = ((chunk >= ord("0")) & (chunk <= ord("9"))) | (chunk == ord("-"))
    first, last = number.copy(), number.copy()
    first[1:] &= ~number[:-1]
    last[:-1] &= ~number[1:]
    starts, units = np.flatnonzero(first), np.flatnonzero(last)
    if len(starts) != count or len(units) != count:
        return None
    negative = chunk[starts] == ord("-")
    digits = units + 1 - starts - negative
    if digits.max() > 18:
        return None
    values = _digit_sum(chunk, units, digits)
    np.negative(values, out=values, where=negative)
    return values


def _digit_sum(chunk: np.ndarray, units: np.ndarray, digits: np.ndarray, fraction=None) -> np.ndarray:
    """The unsigned integers whose digits end at `units` (values,), read units first; 3x numpy's text reader.

    Args:
        chunk: the bytes.
        units: each number's last digit's offset.
        digits: how many digits each has.
        fraction: digits after each number's '.' (0: none), which is skipped.
    """
    values = np.zeros(len(units), np.int64)
    for place in range(int(digits.max())):
        position = units - place
        if fraction is not None:
            position -= (fraction > 0) & (place >= fraction)
        digit = chunk.take(position) - np.uint8(ord("0"))
        digit[digits <= place] = 0
        values += digit * np.int64(10**place)
    return values


def _floats(chunk: np.ndarray, count: int) -> np.ndarray | None:
    """JSON numbers -> float64 (values,) with Python's `float`/`int` values, as json_codec reads them.

    Decimals of at most 15 digits without exponent (the usual image body) are summed from their
    digits as integers, the '.' skipped, and divided by a power of ten: both exact in float64, so the
    quotient is the correctly rounded value (Clinger's fast path). Other chunks go through numpy's correctly rounded
    text reader. JSON integers are Python ints to json_codec: `-0` is +0.0.
    """
    classes = _CLASS.take(chunk)
    number = classes >= _NUMBER
    previous = np.zeros_like(number)
    previous[1:] = number[:-1]
    starts = np.flatnonzero(number & ~previous)
    following = np.zeros_like(number)
    following[:-1] = number[1:]
    ends = np.flatnonzero(number & ~following) + 1
    dots = np.flatnonzero(classes == _P)
    dot_token = np.searchsorted(starts, dots, "right") - 1
    negative = chunk[starts] == ord("-")
    digits = ends - starts - negative
    digits[dot_token] -= 1
    exponents = (classes == _E).any()
    literals = (classes == _L).any()
    decimal = np.zeros(len(starts), bool)
    decimal[dot_token] = True  # tokens with a '.'
    if not exponents and not literals and digits.max() <= _MAX_FAST_DIGITS:
        if len(starts) != count:
            return None
        scale = np.zeros(len(starts), np.intp)
        scale[dot_token] = ends[dot_token] - dots - 1
        mantissas = _digit_sum(chunk, ends - 1, digits, scale)
        values = mantissas / _POW10[scale]
        np.negative(values, out=values, where=negative & (decimal | (mantissas != 0)))  # "-0.0" is -0.0, "-0" +0.0
        return values
    integer = ~decimal
    if exponents:
        integer[np.searchsorted(starts, np.flatnonzero(classes == _E), "right") - 1] = False
    if literals:
        integer[np.searchsorted(starts, np.flatnonzero(classes == _L), "right") - 1] = False
    if (digits[integer] > _MAX_FAST_DIGITS).any():
        return None  # json_codec may cast such an int64 to float32 directly, not through float64
    values = _read(_text(chunk), np.float64, count)
    if values is None:
        return None
    if np.isinf(values).sum() != _infinities(chunk, starts):
        return None  # a finite-looking number past float64: json_codec's "Number too big" error
    values[integer & (values == 0)] = 0.0  # the integer -0 is +0.0
    return values
