"""hnswlib's index file, read and checked before hnswlib is allowed to load it.

hnswlib trusts its file: a header with a huge element count makes it allocate without bound, and a
neighbour id past the end makes it read out of bounds (a SIGSEGV, not an exception). The stamp's
checksum catches accidents, but not a file rewritten together with a matching stamp, so
:func:`read` checks the whole structure first, in one pass over the bytes:

* the header (``hnswalg.h``'s ``saveIndex``: 13 little-endian fields, :data:`HEADER_FIELDS`)
  agrees with the dimension and graph degree the store asked for;
* the element count fits the capacity, the capacity is not absurd, the entry point and top level
  are in range;
* the file is exactly as long as the header, the level-0 records and the upper-level link lists
  it describes;
* every neighbour list holds at most its degree of ids, each naming an existing element.

Layout of one level-0 record (``size_data_per_element`` bytes): a 4-byte header (uint16 neighbour
count, a deleted flag in byte 2), ``maxM0`` uint32 neighbour ids, ``dim`` float32 values (hnswlib
stores cosine vectors normalised), and the uint64 label. Each element then has a uint32 byte size
and its upper-level lists (``level * (4 + 4 * maxM)`` bytes).
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HEADER_FIELDS: dict[str, tuple[int, str]] = {}
"""Each header field's byte offset and struct format, in file order."""
_offset = 0
for _name, _fmt in (
    ("offset_level0", "<Q"), ("max_elements", "<Q"), ("cur_element_count", "<Q"),
    ("size_data_per_element", "<Q"), ("label_offset", "<Q"), ("offset_data", "<Q"),
    ("maxlevel", "<i"), ("enterpoint_node", "<I"), ("maxM", "<Q"), ("maxM0", "<Q"), ("M", "<Q"),
    ("mult", "<d"), ("ef_construction", "<Q"),
):
    HEADER_FIELDS[_name] = (_offset, _fmt)
    _offset += struct.calcsize(_fmt)
HEADER_SIZE = _offset
MAX_LEVEL = 64  # levels are geometric with ratio 1/M: 64 is beyond any real index
NO_ENTRY = 0xFFFFFFFF  # enterpoint_node of an empty index (-1 as an unsigned int)


class IndexFileError(ValueError):
    """The file is not a well-formed hnswlib index of the expected shape (the message says why)."""


@dataclass(frozen=True)
class Header:
    """hnswlib's header fields (names as in ``hnswalg.h``)."""

    offset_level0: int
    max_elements: int
    cur_element_count: int
    size_data_per_element: int
    label_offset: int
    offset_data: int
    maxlevel: int
    enterpoint_node: int
    maxM: int
    maxM0: int
    M: int
    mult: float
    ef_construction: int

    @property
    def header_size(self) -> int:
        """Bytes before the level-0 records."""
        return HEADER_SIZE


def parse_header(data: bytes | mmap.mmap) -> Header:
    """The header of an index file's bytes (no checks beyond its length)."""
    if len(data) < HEADER_SIZE:
        raise IndexFileError(f"the file has {len(data)} bytes, shorter than hnswlib's header")
    return Header(**{name: struct.unpack_from(fmt, data, offset)[0]
                     for name, (offset, fmt) in HEADER_FIELDS.items()})


@dataclass(frozen=True)
class IndexFile:
    """A checked index file: its header and its level-0 records."""

    header: Header
    level0: np.ndarray  # (cur_element_count, size_data_per_element) uint8

    def vectors(self) -> np.ndarray:
        """The stored vector of every slot, deleted ones included: (n, dim) float32."""
        h = self.header
        raw = np.ascontiguousarray(self.level0[:, h.offset_data:h.label_offset])
        return raw.view("<f4").astype(np.float32)


def read(path: str | Path, dim: int | None = None, M: int | None = None,
         ef_construction: int | None = None, min_capacity: int = 1024) -> IndexFile:
    """Read and check an hnswlib cosine/ip index file.

    Args:
        path: The file.
        dim, M, ef_construction: The parameters it must have been built with (None: any).
        min_capacity: Capacity an index may have whatever its element count.

    Raises:
        IndexFileError: on anything hnswlib could misread; OSError if the file is unreadable.
    """
    with open(path, "rb") as fh:  # mapped, not read: an index can be hundreds of MB
        size = os.fstat(fh.fileno()).st_size
        if size < HEADER_SIZE:
            raise IndexFileError(f"the file has {size} bytes, shorter than hnswlib's header")
        data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    h = parse_header(data)
    if h.offset_level0 != 0:
        raise IndexFileError(f"offsetLevel0 is {h.offset_level0}, not 0")
    if M is not None and (h.M, h.maxM, h.maxM0) != (M, M, 2 * M):
        raise IndexFileError(f"the graph degree is M={h.M} (maxM {h.maxM}, maxM0 {h.maxM0}), "
                             f"not M={M}")
    if not 1 <= h.maxM <= 4096 or not 1 <= h.maxM0 <= 8192:
        raise IndexFileError(f"the graph degree maxM={h.maxM}, maxM0={h.maxM0} is out of range")
    if ef_construction is not None and h.ef_construction != ef_construction:
        raise IndexFileError(f"ef_construction is {h.ef_construction}, not {ef_construction}")
    links0 = 4 + 4 * h.maxM0
    if h.offset_data != links0:
        raise IndexFileError(f"offsetData is {h.offset_data}, not {links0}")
    data_size = h.label_offset - h.offset_data
    if data_size <= 0 or data_size % 4 or (dim is not None and data_size != 4 * dim):
        raise IndexFileError(
            f"the vectors take {data_size} bytes" + (f", not {4 * dim}" if dim else ""))
    if h.size_data_per_element != h.label_offset + 8:
        raise IndexFileError(
            f"size_data_per_element is {h.size_data_per_element}, not {h.label_offset + 8}")
    n = h.cur_element_count
    if n > h.max_elements:
        raise IndexFileError(f"{n} elements exceed the capacity of {h.max_elements}")
    if h.max_elements > max(min_capacity, 4 * n + 1024):
        raise IndexFileError(f"a capacity of {h.max_elements} for {n} elements is not plausible")
    if n * h.size_data_per_element > len(data) - HEADER_SIZE:
        raise IndexFileError(f"the file is too short for {n} elements")
    if n == 0:
        if h.maxlevel != -1 or h.enterpoint_node != NO_ENTRY or len(data) != HEADER_SIZE:
            raise IndexFileError("an empty index with an entry point, levels or data")
        return IndexFile(h, np.zeros((0, h.size_data_per_element), np.uint8))
    if not 0 <= h.maxlevel <= MAX_LEVEL:
        raise IndexFileError(f"the top level {h.maxlevel} is out of range")
    if h.enterpoint_node >= n:
        raise IndexFileError(f"the entry point {h.enterpoint_node} is not one of {n} elements")

    end0 = HEADER_SIZE + n * h.size_data_per_element
    level0 = np.frombuffer(data, np.uint8, n * h.size_data_per_element, HEADER_SIZE)
    level0 = level0.reshape(n, h.size_data_per_element)
    _check_lists(level0[:, :links0], h.maxM0, n, "level 0")

    per_level = 4 + 4 * h.maxM
    pos, levels = end0, np.zeros(n, np.int64)
    upper: list[np.ndarray] = []
    for i in range(n):
        if pos + 4 > len(data):
            raise IndexFileError("the file ends inside the upper-level link lists")
        size = struct.unpack_from("<I", data, pos)[0]
        pos += 4
        if size % per_level or size // per_level > h.maxlevel or pos + size > len(data):
            raise IndexFileError(f"element {i} has a malformed upper-level list ({size} bytes)")
        if size:
            levels[i] = size // per_level
            upper.append(np.frombuffer(data, np.uint8, size, pos).reshape(-1, per_level))
        pos += size
    if pos != len(data):
        raise IndexFileError(f"{len(data) - pos} bytes follow the last element")
    if levels[h.enterpoint_node] != h.maxlevel:
        raise IndexFileError("the entry point is not on the top level")
    if upper:
        _check_lists(np.concatenate(upper), h.maxM, n, "an upper level")
    return IndexFile(h, level0)


def _check_lists(lists: np.ndarray, degree: int, n: int, where: str) -> None:
    """Each row: uint16 count, 2 flag bytes, then ``degree`` uint32 ids; counts and ids in range."""
    rows = np.ascontiguousarray(lists)
    counts = rows[:, :2].copy().view("<u2")[:, 0].astype(np.int64)
    if counts.max(initial=0) > degree:
        raise IndexFileError(f"a neighbour list at {where} holds more than {degree} ids")
    ids = rows[:, 4:4 + 4 * degree].copy().view("<u4")
    used = np.arange(degree)[None, :] < counts[:, None]
    if used.any() and int(ids[used].max()) >= n:
        raise IndexFileError(f"a neighbour id at {where} names no element")
