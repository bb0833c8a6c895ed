"""A stdlib reader for R's serialization (XDR, versions 2-3) and lazy-load databases.

An R package's ``data/Rdata.rdx`` is a gzip-compressed serialized list
``(variables = list(name = c(offset, length)), references, compressed)``; ``Rdata.rdb``
holds one record per variable at ``[offset, offset + length)``: a 4-byte big-endian
uncompressed length, then (``compressed`` = 2 or 3) a type byte 'Z' zlib, '2' bzip2,
'X' xz or '0' none, then the payload (``compressed`` = TRUE: zlib, no type byte).
The payload is an R serialization stream. Reference: R's ``src/main/serialize.c``.

Vectors decode to ``RVector`` (a list with an ``attrs`` dict); NA becomes None.
Closures, environments and byte code are not supported.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from pathlib import Path

# SEXP types (serialize.c / Rinternals.h)
SYMSXP, LISTSXP, CLOSXP, ENVSXP, PROMSXP, LANGSXP = 1, 2, 3, 4, 5, 6
CHARSXP, LGLSXP, INTSXP, REALSXP, CPLXSXP, STRSXP = 9, 10, 13, 14, 15, 16
DOTSXP, VECSXP, EXPRSXP, RAWSXP, S4SXP = 17, 19, 20, 24, 25
ALTREP_SXP, ATTRLISTSXP, ATTRLANGSXP, PERSISTSXP = 238, 239, 240, 247
REFSXP, NILVALUE_SXP = 255, 254
SPECIAL_VALUES = {253: "R_GlobalEnv", 252: "R_UnboundValue", 251: "R_MissingArg",
                  250: "R_BaseNamespace", 242: "R_EmptyEnv", 241: "R_BaseEnv"}
PAIRLISTS = {LISTSXP, LANGSXP, CLOSXP, PROMSXP, DOTSXP, ATTRLISTSXP, ATTRLANGSXP}
NA_INTEGER = -(2 ** 31)
UTF8_MASK, LATIN1_MASK, BYTES_MASK, ASCII_MASK = 8, 4, 2, 64


class RVector(list):
    """An R vector or pairlist: its elements, plus R attributes (``names``, ``class``, ...)."""

    def __init__(self, items=(), attrs: dict | None = None):
        super().__init__(items)
        self.attrs = attrs or {}

    def named(self) -> dict:
        """``{name: element}`` using the ``names`` attribute."""
        return dict(zip(self.attrs.get("names") or [], self))


class Symbol(str):
    """An R symbol (a name), distinct from a character string."""


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos, self.refs = data, 0, []
        fmt = self._take(2)
        if fmt != b"X\n":
            raise ValueError(f"not an XDR R serialization stream (header {fmt!r})")
        version, _writer, _min_reader = self._ints(3)
        if version not in (2, 3):
            raise ValueError(f"unsupported R serialization version {version}")
        self.encoding = "utf-8"
        if version == 3:
            self.encoding = self._take(self._int()).decode("ascii")

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("truncated R serialization stream")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def _ints(self, n: int) -> tuple[int, ...]:
        return struct.unpack(f">{n}i", self._take(4 * n))

    def _int(self) -> int:
        return self._ints(1)[0]

    def _length(self) -> int:
        n = self._int()
        if n == -1:  # long vector: two more ints
            upper, lower = struct.unpack(">2I", self._take(8))
            n = (upper << 32) + lower
        return n

    def _string(self, levels: int) -> str | bytes | None:
        n = self._int()
        if n == -1:
            return None  # NA_character_
        raw = self._take(n)
        if levels & BYTES_MASK:
            return raw
        if levels & LATIN1_MASK:
            return raw.decode("latin-1")
        encoding = "utf-8" if levels & (UTF8_MASK | ASCII_MASK) else self.encoding
        return raw.decode(encoding, errors="replace")

    def _attributes(self) -> dict:
        return self.read().named()

    def read(self, flags: int | None = None):
        flags = self._int() if flags is None else flags
        kind, levels = flags & 0xFF, flags >> 12
        has_attr = bool(flags & (1 << 9))
        if kind == NILVALUE_SXP:
            return None
        if kind in SPECIAL_VALUES:
            return SPECIAL_VALUES[kind]
        if kind == REFSXP:
            index = flags >> 8 or self._int()
            return self.refs[index - 1]
        if kind == SYMSXP:
            symbol = Symbol(self.read())
            self.refs.append(symbol)
            return symbol
        if kind == PERSISTSXP:
            name = self.read()
            self.refs.append(name)
            return name
        if kind in PAIRLISTS:
            return self._pairlist(flags)
        if kind == ALTREP_SXP:
            return self._altrep()
        if kind == CHARSXP:
            return self._string(levels)
        value = self._vector(kind)
        if has_attr:
            value.attrs = self._attributes()
        return value

    def _vector(self, kind: int) -> RVector:
        if kind == S4SXP:
            return RVector()
        n = self._length()
        if kind in (LGLSXP, INTSXP):
            ints = self._ints(n)
            items = [None if v == NA_INTEGER else (bool(v) if kind == LGLSXP else v) for v in ints]
        elif kind == REALSXP:
            items = struct.unpack(f">{n}d", self._take(8 * n))
        elif kind == CPLXSXP:
            parts = struct.unpack(f">{2 * n}d", self._take(16 * n))
            items = [complex(parts[i], parts[i + 1]) for i in range(0, 2 * n, 2)]
        elif kind == RAWSXP:
            items = self._take(n)
        elif kind in (STRSXP, VECSXP, EXPRSXP):
            items = [self.read() for _ in range(n)]
        else:
            raise ValueError(f"unsupported R object type {kind} at byte {self.pos}")
        return RVector(items)

    def _pairlist(self, flags: int) -> RVector:
        """A pairlist read iteratively (long ones would overflow recursion)."""
        out = RVector()
        names = []
        while True:
            attrs = self._attributes() if flags & (1 << 9) else {}
            names.append(self.read() if flags & (1 << 10) else None)
            out.append(self.read())
            out.attrs.update(attrs)
            flags = self._int()
            if flags & 0xFF not in PAIRLISTS:
                break
        tail = self.read(flags)
        if tail is not None:
            raise ValueError("improper R pairlist (non-NULL tail)")
        out.attrs["names"] = names
        return out

    def _altrep(self):
        """Compact/wrapped/deferred vectors R >= 3.5 may write in place of ordinary ones."""
        info, state, attr = self.read(), self.read(), self.read()
        cls = info[0]
        if cls in ("compact_intseq", "compact_realseq"):
            n, start, step = state
            value = RVector(start + i * step for i in range(int(n)))
            if cls == "compact_intseq":
                value = RVector(int(v) for v in value)
        elif cls == "deferred_string":
            value = RVector(None if v is None else str(v) for v in state[0])
        elif str(cls).startswith("wrap_"):
            value = RVector(state[0], state[0].attrs)
        else:
            raise ValueError(f"unsupported ALTREP class {cls!r}")
        if attr is not None:
            value.attrs = attr.named()
        return value


def unserialize(data: bytes):
    """Decode one R serialization stream (XDR format), gzip-wrapped or not."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return _Reader(data).read()


def _decompress(record: bytes, compressed) -> bytes:
    (size,) = struct.unpack(">I", record[:4])
    if compressed in (True, 1):
        out = zlib.decompress(record[4:])
    else:
        kind, payload = record[4:5], record[5:]
        codecs = {b"Z": zlib.decompress, b"2": bz2.decompress, b"X": lzma.decompress,
                  b"0": bytes}
        if kind not in codecs:
            raise ValueError(f"unknown lazy-load record type {kind!r}")
        out = codecs[kind](payload)
    if len(out) != size:
        raise ValueError(f"lazy-load record decompressed to {len(out)} bytes, expected {size}")
    return out


class LazyLoadDB:
    """R lazy-load database ``<stem>.rdx`` + ``<stem>.rdb``: ``db.names``, ``db[name]``."""

    def __init__(self, stem: str | Path):
        stem = Path(stem)
        self.rdb = stem.with_suffix(".rdb")
        index = unserialize(stem.with_suffix(".rdx").read_bytes()).named()
        self.compressed = index["compressed"][0]
        self.variables = {name: (int(off), int(n)) for name, (off, n)
                          in index["variables"].named().items()}

    @property
    def names(self) -> list[str]:
        return list(self.variables)

    def __getitem__(self, name: str):
        if name not in self.variables:
            raise KeyError(f"{name!r} is not in {self.rdb}; it holds {self.names}")
        offset, length = self.variables[name]
        with open(self.rdb, "rb") as f:
            f.seek(offset)
            record = f.read(length)
        return unserialize(_decompress(record, self.compressed))
