# SPDX-License-Identifier: Apache-2.0
"""Tensors on the wire: KServe v2 datatype names, JSON and binary (Triton binary tensor
extension, raw_*_contents in gRPC) encodings. Decoding never copies more than needed
(numpy.frombuffer) and every malformed input raises InvalidInputError."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from .errors import InvalidInputError

DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_BY_NUMPY = {v: k for k, v in DTYPES.items() if k != "BYTES"}


def datatype_of(array: np.ndarray) -> str:
    if array.dtype == object or array.dtype.kind in ("S", "U"):
        return "BYTES"
    try:
        return _BY_NUMPY[array.dtype]
    except KeyError:
        raise InvalidInputError(f"unsupported tensor dtype {array.dtype}") from None


def numpy_dtype(datatype: Any) -> np.dtype:
    try:
        return DTYPES[datatype]
    except (KeyError, TypeError):
        raise InvalidInputError(
            f"unknown datatype {datatype!r}; use one of {', '.join(DTYPES)}"
        ) from None


#: The most elements (and the largest dimension) a tensor may declare: far above any body
#: the size limits let through, far below where element counts overflow 64-bit arithmetic.
MAX_ELEMENTS = 2**40


def check_shape(shape: Any, name: str) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)) or len(shape) > 16:
        raise InvalidInputError(f"input {name!r}: 'shape' must be a list of at most 16 ints")
    for dim in shape:
        if type(dim) is not int or dim < 0 or dim > MAX_ELEMENTS:
            raise InvalidInputError(f"input {name!r}: invalid dimension {dim!r} in shape")
    if element_count(tuple(shape)) > MAX_ELEMENTS:
        raise InvalidInputError(
            f"input {name!r}: shape {list(shape)} has more than 2^40 elements")
    return tuple(shape)


def element_count(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def from_json(data: Any, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    """A tensor from the JSON `data` field (flat or nested, row-major)."""
    dtype = numpy_dtype(datatype)
    if not isinstance(data, list):
        data = [data]
    try:
        if datatype == "BYTES":
            flat = _flatten(data)
            array = np.empty(len(flat), dtype=object)
            array[:] = [s.encode() if isinstance(s, str) else _bad_bytes(s, name) for s in flat]
        else:
            array = np.asarray(data)
            if array.size:
                allowed = "b" if datatype == "BOOL" else "iu" if dtype.kind in "iu" else "iuf"
                if array.dtype.kind == "O" and dtype.kind in "iu":
                    raise ValueError("an integer beyond 64 bits" + _range_hint(datatype))
                if array.dtype.kind not in allowed:
                    raise ValueError(f"values of kind {array.dtype.kind!r}")
            array = checked_cast(array, datatype, name).ravel()
    except (ValueError, TypeError, OverflowError, FloatingPointError, RecursionError) as exc:
        raise InvalidInputError(f"input {name!r}: data does not match {datatype}: {exc}") from None
    if array.size != element_count(shape):
        raise InvalidInputError(
            f"input {name!r}: {array.size} values do not fill shape {list(shape)}"
        )
    return array.reshape(shape)


def _range_hint(datatype: str) -> str:
    dtype = DTYPES[datatype]
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return f"; {datatype} holds {info.min}..{info.max}"
    return f"; {datatype} holds magnitudes up to {float(np.finfo(dtype).max):g}"


def checked_cast(array: np.ndarray, datatype: str, name: str) -> np.ndarray:
    """`array` as `datatype`, refusing values the type cannot hold: numpy's cast would wrap
    integers (2^40 as INT32 becomes 0, -1 as UINT8 255) and turn large floats into inf."""
    dtype = numpy_dtype(datatype)
    if array.size and dtype.kind in "iu" and array.dtype.kind in "iu" and array.dtype != dtype:
        info = np.iinfo(dtype)
        low, high = int(array.min()), int(array.max())
        bad = low if low < info.min else high if high > info.max else None
        if bad is not None:
            raise InvalidInputError(
                f"input {name!r}: value {bad} is out of range{_range_hint(datatype)}")
    if array.size and dtype.kind == "f" and array.dtype.kind in "iuf" \
            and array.dtype.itemsize >= dtype.itemsize and array.dtype != dtype:
        finite = np.abs(array[np.isfinite(array)]) if array.dtype.kind == "f" else np.abs(array)
        if finite.size and float(finite.max()) > float(np.finfo(dtype).max):
            raise InvalidInputError(
                f"input {name!r}: value {float(finite.max()):g} is out of range"
                f"{_range_hint(datatype)}")
    return array.astype(dtype, copy=False)


#: The gRPC `InferTensorContents` field each datatype's typed values travel in, and the
#: numpy type of that field (what protobuf guarantees the values fit).
CONTENTS_FIELDS: dict[str, tuple[str, np.dtype]] = {
    "BOOL": ("bool_contents", np.dtype(np.bool_)),
    "INT8": ("int_contents", np.dtype(np.int32)),
    "INT16": ("int_contents", np.dtype(np.int32)),
    "INT32": ("int_contents", np.dtype(np.int32)),
    "INT64": ("int64_contents", np.dtype(np.int64)),
    "UINT8": ("uint_contents", np.dtype(np.uint32)),
    "UINT16": ("uint_contents", np.dtype(np.uint32)),
    "UINT32": ("uint_contents", np.dtype(np.uint32)),
    "UINT64": ("uint64_contents", np.dtype(np.uint64)),
    "FP32": ("fp32_contents", np.dtype(np.float32)),
    "FP64": ("fp64_contents", np.dtype(np.float64)),
    "BYTES": ("bytes_contents", np.dtype(object)),
}


def from_contents(contents: Any, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    """A tensor from gRPC typed contents (`InferTensorContents`), range-checked."""
    entry = CONTENTS_FIELDS.get(datatype)
    if entry is None:
        raise InvalidInputError(f"input {name!r}: {datatype} needs raw_input_contents")
    field_name, field_dtype = entry
    values = getattr(contents, field_name)
    count = element_count(shape)
    if len(values) != count:
        raise InvalidInputError(
            f"input {name!r}: {len(values)} values do not fill shape {list(shape)}")
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
    else:
        array = checked_cast(np.asarray(values, dtype=field_dtype), datatype, name)
    return array.reshape(shape)


def _bad_bytes(value: Any, name: str) -> bytes:
    raise InvalidInputError(f"input {name!r}: BYTES values must be strings, got {value!r}")


def _flatten(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def to_json(array: np.ndarray) -> list[Any]:
    if array.dtype == object or array.dtype.kind in ("S", "U"):
        return [
            v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            for v in array.ravel()
        ]
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    result: list[Any] = array.ravel().tolist()
    return result


def from_bytes(
    buffer: bytes | memoryview, datatype: str, shape: tuple[int, ...], name: str
) -> np.ndarray:
    """A tensor from raw bytes (row-major; BYTES elements are 4-byte-length-prefixed)."""
    dtype = numpy_dtype(datatype)
    count = element_count(shape)
    if datatype == "BYTES":
        return _deserialize_bytes(buffer, count, name).reshape(shape)
    if len(buffer) != count * dtype.itemsize:
        raise InvalidInputError(
            f"input {name!r}: {len(buffer)} bytes do not fill shape {list(shape)} of {datatype} "
            f"({count * dtype.itemsize} bytes expected)"
        )
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def _deserialize_bytes(buffer: bytes | memoryview, count: int, name: str) -> np.ndarray:
    view = memoryview(buffer)
    items = []
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise InvalidInputError(f"input {name!r}: truncated BYTES element length")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidInputError(f"input {name!r}: truncated BYTES element")
        items.append(bytes(view[offset : offset + length]))
        offset += length
        if len(items) > count:  # stop here: a bomb of empty elements must not be walked
            raise InvalidInputError(
                f"input {name!r}: more BYTES elements than the {count} its shape holds"
            )
    if len(items) != count:
        raise InvalidInputError(
            f"input {name!r}: {len(items)} BYTES elements do not fill {count} expected"
        )
    array = np.empty(count, dtype=object)
    array[:] = items
    return array


def to_bytes(array: np.ndarray) -> bytes | memoryview:
    """Raw bytes of a tensor (zero-copy for contiguous numeric arrays)."""
    if array.dtype == object or array.dtype.kind in ("S", "U"):
        parts = []
        for value in array.ravel():
            data = value if isinstance(value, bytes) else str(value).encode()
            parts.append(struct.pack("<I", len(data)))
            parts.append(data)
        return b"".join(parts)
    array = np.ascontiguousarray(array)
    return memoryview(array).cast("B")  # type: ignore[arg-type]
