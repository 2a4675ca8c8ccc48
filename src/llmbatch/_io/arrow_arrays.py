"""Arrow arrays built from their buffers, for the vector writer.

``pyarrow.array(x)`` asks, for any ``x`` (a list, a numpy array), whether it is a
pandas object — and that question imports pandas when it is installed: some 50 MiB
of resident memory for a run that never uses it. ``Array.from_buffers`` asks
nothing, and the buffers are cheap to build with numpy (a constant column is a
repeated value, a float matrix is its own buffer, no copy). Only what the vector
writer needs is here: strings (nullable), constant strings, int32, float64 and
fixed-size float32 lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa


def _validity(valid: Any) -> Any:
    """A validity bitmap from a numpy bool array (None when every value is valid)."""
    import numpy as np
    import pyarrow as pa

    if valid.all():
        return None
    return pa.py_buffer(np.packbits(valid, bitorder="little"))


def strings(values: Sequence[str | None]) -> pa.Array:
    """A string array of ``values`` (None: null)."""
    import numpy as np
    import pyarrow as pa

    n = len(values)
    encoded = [b"" if v is None else v.encode() for v in values]
    offsets = np.zeros(n + 1, dtype=np.int32)
    if n:
        np.cumsum(np.fromiter(map(len, encoded), dtype=np.int32, count=n), out=offsets[1:])
    valid = np.fromiter((v is not None for v in values), dtype=np.bool_, count=n)
    data = pa.py_buffer(b"".join(encoded))
    bitmap = _validity(valid)
    nulls = n - int(valid.sum()) if bitmap is not None else 0
    return pa.Array.from_buffers(
        pa.string(), n, [bitmap, pa.py_buffer(offsets), data], null_count=nulls
    )


def constant_string(value: str | None, n: int) -> pa.Array:
    """``value`` ``n`` times (None: ``n`` nulls)."""
    import numpy as np
    import pyarrow as pa

    if value is None:
        return pa.nulls(n, pa.string())
    raw = value.encode()
    offsets = np.arange(n + 1, dtype=np.int32) * np.int32(len(raw))
    return pa.Array.from_buffers(
        pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(raw * n)], null_count=0
    )


def int32s(values: Any) -> pa.Array:
    """An int32 array from a sequence of ints (or a numpy array)."""
    import numpy as np
    import pyarrow as pa

    arr = np.ascontiguousarray(values, dtype=np.int32)
    return pa.Array.from_buffers(pa.int32(), len(arr), [None, pa.py_buffer(arr)], null_count=0)


def constant_int32(value: int, n: int) -> pa.Array:
    import numpy as np

    return int32s(np.full(n, value, dtype=np.int32))


def constant_float64(value: float | None, n: int) -> pa.Array:
    import numpy as np
    import pyarrow as pa

    if value is None:
        return pa.nulls(n, pa.float64())
    arr = np.full(n, value, dtype=np.float64)
    return pa.Array.from_buffers(pa.float64(), n, [None, pa.py_buffer(arr)], null_count=0)


def float32_lists(matrix: Any, dim: int) -> pa.Array:
    """A fixed-size list<float32>[dim] array over an (n × dim) matrix: no copy when the
    matrix is C-contiguous float32 already."""
    import numpy as np
    import pyarrow as pa

    flat = np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1)
    values = pa.Array.from_buffers(
        pa.float32(), len(flat), [None, pa.py_buffer(flat)], null_count=0
    )
    return pa.FixedSizeListArray.from_arrays(values, dim)


def validity(arr: Any) -> Any:
    """A numpy bool array, True where ``arr`` holds a value (None: every value)."""
    import numpy as np

    bitmap = arr.buffers()[0]
    if bitmap is None or arr.null_count == 0:
        return None
    bits = np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8), bitorder="little")
    return bits[arr.offset : arr.offset + len(arr)].astype(np.bool_)


def float32_rows(col: Any, dim: int) -> Any:
    """The (n × dim) float32 values of a fixed-size list column, a view of its buffer
    (no copy; null rows hold whatever their slots hold), or None when it has none."""
    import numpy as np

    child = col.values  # the whole child, whatever the column's own offset
    data = child.buffers()[1]
    if data is None:
        return None
    start = child.offset + col.offset * dim
    flat = np.frombuffer(data, dtype=np.float32, count=len(col) * dim, offset=start * 4)
    return flat.reshape(len(col), dim)
