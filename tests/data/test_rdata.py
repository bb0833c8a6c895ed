"""The R serialization reader, on hand-built streams and on janeaustenr's lazy-load DB."""
import bz2
import lzma
import struct
import zlib

import pytest

from lowbit.data.rdata import LazyLoadDB, _decompress, unserialize


def _int(*values):
    return struct.pack(f">{len(values)}i", *values)


def _charsxp(text):
    if text is None:
        return _int(0x9, -1)
    raw = text.encode()
    return _int(0x40009) + _int(len(raw)) + raw  # CHARSXP, ASCII flag


def _stream(body):
    header = b"X\n" + _int(3, 0x40201, 0x30500) + _int(5) + b"UTF-8"
    return header + body


def _named_strings(values, names):
    """c(a = "x", ...) : STRSXP with a names attribute (pairlist tagged with symbol 'names')."""
    body = _int(0x210, len(values)) + b"".join(_charsxp(v) for v in values)
    body += _int(0x402) + _int(0x1) + _charsxp("names")  # LISTSXP with tag, SYMSXP names
    body += _int(0x10, len(names)) + b"".join(_charsxp(n) for n in names)
    return body + _int(0xFE)  # NILVALUE ends the attribute pairlist


def test_named_character_vector_with_na():
    value = unserialize(_stream(_named_strings(["It is a truth", None], ["a", "b"])))
    assert list(value) == ["It is a truth", None]
    assert value.named() == {"a": "It is a truth", "b": None}


def test_integer_real_logical_vectors():
    na = -(2 ** 31)
    ints = unserialize(_stream(_int(0xD, 3, 1, na, 7)))
    reals = unserialize(_stream(_int(0xE, 2) + struct.pack(">2d", 0.5, -2.0)))
    logicals = unserialize(_stream(_int(0xA, 2, 1, 0)))
    assert list(ints) == [1, None, 7] and list(reals) == [0.5, -2.0]
    assert list(logicals) == [True, False]


def test_symbol_reference_reuses_the_first_read():
    # list(names-tagged pairlist twice): second tag is REFSXP 1 -> the symbol 'names'
    body = _int(0x13, 2) + _int(0x402, 0x1) + _charsxp("k") + _int(0xD, 1, 5) + _int(0xFE)
    body += _int(0x402) + _int(0x1FF) + _int(0xD, 1, 6) + _int(0xFE)
    value = unserialize(_stream(body))
    assert value[0].named() == {"k": [5]} and value[1].named() == {"k": [6]}


@pytest.mark.parametrize("kind", ["zlib-bare", "Z", "2", "X", "0"])
def test_lazy_load_record_codecs(kind):
    payload = b"serialized object bytes" * 10
    size = struct.pack(">I", len(payload))
    if kind == "zlib-bare":  # compress = TRUE: no type byte
        assert _decompress(size + zlib.compress(payload), True) == payload
        return
    packed = {"Z": zlib.compress, "2": bz2.compress, "X": lzma.compress, "0": bytes}[kind](payload)
    assert _decompress(size + kind.encode() + packed, 3) == payload


def test_truncated_stream_is_an_error():
    with pytest.raises(ValueError, match="truncated"):
        unserialize(_stream(_int(0x10, 3) + _charsxp("one")))


@pytest.mark.real
def test_janeaustenr_lazy_load_index():
    from lowbit.data.debs import JANEAUSTENR, asset_root

    db = LazyLoadDB(asset_root(JANEAUSTENR) / "usr/lib/R/site-library/janeaustenr/data/Rdata")
    assert sorted(db.names) == sorted(["emma", "mansfieldpark", "northangerabbey", "persuasion",
                                       "prideprejudice", "sensesensibility"])
    assert db.compressed is True
