"""Broken and hostile zips built by hand, byte by byte, for the archive and API tests.

zipfile writes only well-formed archives, so each fault is patched into the bytes afterwards: a CRC that does
not match, a member that claims Deflate64 (method 9, which Python cannot read), a deflate stream cut short
or scrambled, and a member name thousands of characters long.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

LOCAL = b"PK\x03\x04"
CENTRAL = b"PK\x01\x02"


def build_zip(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _headers(data: bytes | bytearray, name: str) -> list[tuple[int, int]]:
    """(offset, kind) of the local (0) and central (1) headers of member `name`."""
    found = []
    for kind, (signature, name_len_at, name_at) in enumerate(((LOCAL, 26, 30), (CENTRAL, 28, 46))):
        start = 0
        while (start := data.find(signature, start)) != -1:
            (length,) = struct.unpack_from("<H", data, start + name_len_at)
            if bytes(data[start + name_at : start + name_at + length]) == name.encode():
                found.append((start, kind))
            start += 4
    return found


def _local_data_span(data: bytes | bytearray, offset: int) -> tuple[int, int]:
    """Start and compressed length of the data after the local header at `offset`."""
    (compressed,) = struct.unpack_from("<I", data, offset + 18)
    name_len, extra_len = struct.unpack_from("<HH", data, offset + 26)
    return offset + 30 + name_len + extra_len, compressed


def with_bad_crc(data: bytes, name: str) -> bytes:
    """The member's CRC-32 in both headers off by one bit: reading it ends in BadZipFile('Bad CRC-32')."""
    out = bytearray(data)
    for offset, kind in _headers(out, name):
        crc_at = offset + (14 if kind == 0 else 16)
        out[crc_at] ^= 0x01
    return bytes(out)


def with_method(data: bytes, name: str, method: int = 9) -> bytes:
    """The member claims another compression method (9 = Deflate64): zipfile raises NotImplementedError."""
    out = bytearray(data)
    for offset, kind in _headers(out, name):
        struct.pack_into("<H", out, offset + (8 if kind == 0 else 10), method)
    return bytes(out)


def with_scrambled_deflate(data: bytes, name: str) -> bytes:
    """The member's deflate stream overwritten with bytes that are not deflate: zlib.error on reading."""
    out = bytearray(data)
    offset = next(o for o, kind in _headers(out, name) if kind == 0)
    start, length = _local_data_span(out, offset)
    out[start : start + length] = bytes([0xFF]) * length  # block type 3 (reserved): "invalid block type"
    return bytes(out)


def with_truncated_deflate(members: dict[str, bytes], name: str, keep: float = 0.5) -> bytes:
    """A zip whose member `name` holds only the first part of its deflate stream (sizes and CRC say the
    whole): zipfile runs out of compressed bytes before the stream ends (EOFError)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for member, payload in members.items():
            if member != name:
                zf.writestr(member, payload)
                continue
            compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
            stream = compressor.compress(payload) + compressor.flush()
            cut = stream[: max(1, int(len(stream) * keep))]
            info = zipfile.ZipInfo(member)
            info.compress_type = zipfile.ZIP_STORED  # written raw, then relabelled as deflated below
            zf.writestr(info, cut)
    out = bytearray(buf.getvalue())
    for offset, kind in _headers(out, name):
        base = 8 if kind == 0 else 10
        struct.pack_into("<H", out, offset + base, zipfile.ZIP_DEFLATED)
        struct.pack_into("<I", out, offset + base + 6, zlib.crc32(payload_of(members, name)))
        struct.pack_into("<I", out, offset + base + 14, len(payload_of(members, name)))  # uncompressed size
    return bytes(out)


def payload_of(members: dict[str, bytes], name: str) -> bytes:
    return members[name]


def nested(outer_name: str, inner: bytes, others: dict[str, bytes] | None = None) -> bytes:
    """`inner` stored (not recompressed) as member `outer_name` of a new zip, with `others` beside it."""
    return build_zip({**(others or {}), outer_name: inner}, method=zipfile.ZIP_STORED)
