"""One row group's Parquet footer, cut from its file's footer.

pyarrow reads a row group only through a parsed footer of the whole file, which holds about 1 KB
per column chunk in memory: for a table streamed in small row groups that is some 5% of the
decoded data, in every process that reads. Cutting the footer into one footer per row group
(the same schema and file-level fields, one row group whose column chunks keep their offsets
into the original file) lets a reader parse only the group it reads, so what it holds no longer
grows with the table.

The footer is a Thrift compact-protocol `FileMetaData`
(https://github.com/apache/parquet-format/blob/master/src/main/thrift/parquet.thrift, field 3
`num_rows`, field 4 `row_groups`); the protocol:
https://github.com/apache/thrift/blob/master/doc/specs/thrift-compact-protocol.md. Only the
structure is walked, nothing is decoded but the row counts; encrypted footers are refused.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

_MAGIC = b"PAR1"
_STRUCT, _LIST, _SET, _MAP = 12, 9, 10, 11
_NUM_ROWS, _ROW_GROUPS = 3, 4  # FileMetaData's fields; RowGroup's num_rows is field 3 too


class FooterError(ValueError):
    """The file's tail is not a plain (unencrypted) Parquet footer."""


def file_footer(path: str | Path) -> bytes:
    """The serialized `FileMetaData` at the end of a Parquet file."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size < 12:
            raise FooterError("too short to be Parquet")
        f.seek(size - 8)
        length, magic = struct.unpack("<I4s", f.read(8))
        if magic != _MAGIC or length > size - 12:
            raise FooterError("no plain Parquet footer at its end (encrypted, or not Parquet)")
        f.seek(size - 8 - length)
        return f.read(length)


def row_group_footers(footer: bytes) -> list[bytes]:
    """One footer per row group, each a complete file tail (footer, its length, "PAR1") that
    `pyarrow.parquet.read_metadata(pyarrow.BufferReader(tail))` parses."""
    try:
        fields, groups = _walk(footer)
    except IndexError:
        raise FooterError("its footer ends in the middle of a value") from None
    if _NUM_ROWS not in fields or _ROW_GROUPS not in fields:
        raise FooterError("its footer has no row count or no row groups")
    rows_start, rows_end = fields[_NUM_ROWS]
    list_start, list_end = fields[_ROW_GROUPS]
    head, middle, tail = footer[:rows_start], footer[rows_end:list_start], footer[list_end:]
    one = bytes([0x10 | _STRUCT])  # a list header: one element, of structs
    out = []
    for start, end, rows in groups:
        body = b"".join((head, _varint(_zigzag(rows)), middle, one, footer[start:end], tail))
        out.append(body + struct.pack("<I", len(body)) + _MAGIC)
    return out


def open_row_group(path: str | Path, tail: bytes) -> Any:
    """A `pyarrow.parquet.ParquetFile` on `path` whose only row group (0) is the one `tail`,
    from `row_group_footers`, describes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    metadata = pq.read_metadata(pa.BufferReader(tail))
    # no pre-buffering: it would keep what it read for the reader's lifetime
    return pq.ParquetFile(path, metadata=metadata, pre_buffer=False)


# ----------------------------------------------------------------- Thrift compact protocol


def _walk(b: bytes) -> tuple[dict[int, tuple[int, int]], list[tuple[int, int, int]]]:
    """FileMetaData's fields: num_rows' value span, the row-group list's span (header
    included), and each row group's span with its row count."""
    fields: dict[int, tuple[int, int]] = {}
    groups: list[tuple[int, int, int]] = []
    i, field = 0, 0
    while True:
        i, field, kind = _field_header(b, i, field)
        if kind == 0:
            return fields, groups
        start = i
        if field == _ROW_GROUPS and kind == _LIST:
            count, element, i = _list_header(b, i)
            if element != _STRUCT:
                raise FooterError("its row groups are not structs")
            for _ in range(count):
                group_start = i
                i, rows = _row_group(b, i)
                groups.append((group_start, i, rows))
        else:
            i = _skip(b, i, kind)
        fields[field] = (start, i)


def _row_group(b: bytes, i: int) -> tuple[int, int]:
    """Skip one RowGroup struct; its end and its num_rows (field 3)."""
    field, rows = 0, -1
    while True:
        i, field, kind = _field_header(b, i, field)
        if kind == 0:
            if rows < 0:
                raise FooterError("a row group without a row count")
            return i, rows
        if field == _NUM_ROWS:
            value, i = _read_varint(b, i)
            rows = (value >> 1) ^ -(value & 1)
        else:
            i = _skip(b, i, kind)


def _field_header(b: bytes, i: int, last: int) -> tuple[int, int, int]:
    """(next offset, field id, type); type 0 ends the struct."""
    byte = b[i]
    i += 1
    if byte == 0:
        return i, last, 0
    delta, kind = byte >> 4, byte & 0x0F
    if delta:
        return i, last + delta, kind
    value, i = _read_varint(b, i)
    return i, (value >> 1) ^ -(value & 1), kind


def _list_header(b: bytes, i: int) -> tuple[int, int, int]:
    byte = b[i]
    count, element = byte >> 4, byte & 0x0F
    i += 1
    if count == 15:
        count, i = _read_varint(b, i)
    return count, element, i


def _skip(b: bytes, i: int, kind: int) -> int:
    """The offset after one value of `kind`."""
    if kind in (1, 2):  # a boolean field carries its value in the header
        return i
    if kind == 3:
        return i + 1
    if kind in (4, 5, 6):
        return _read_varint(b, i)[1]
    if kind == 7:
        return i + 8
    if kind == 8:
        length, i = _read_varint(b, i)
        return i + length
    if kind in (_LIST, _SET):
        count, element, i = _list_header(b, i)
        for _ in range(count):
            i = i + 1 if element in (1, 2) else _skip(b, i, element)
        return i
    if kind == _MAP:
        count, i = _read_varint(b, i)
        if count:
            types = b[i]
            i += 1
            for _ in range(count):
                i = _skip(b, _skip(b, i, types >> 4), types & 0x0F)
        return i
    if kind == _STRUCT:
        field = 0
        while True:
            i, field, inner = _field_header(b, i, field)
            if inner == 0:
                return i
            i = _skip(b, i, inner)
    if kind == 13:  # UUID
        return i + 16
    raise FooterError(f"an unknown Thrift type {kind} at byte {i}")


def _read_varint(b: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = b[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def _zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)
