"""Files the attachment tests upload: photos with GPS in their EXIF, PDFs, and the
malformed ones (spoofed, polyglots, bombs, truncated)."""

from __future__ import annotations

import io
import struct
import zlib

import pillow_heif
from PIL import Image

pillow_heif.register_heif_opener()

GPS_IFD = 0x8825
GPS_LATITUDE = 2
CAMERA_SERIAL = 0xA431  # BodySerialNumber


def photo(kind: str = "JPEG", size: tuple[int, int] = (1200, 900), orientation: int = 1) -> bytes:
    """A photo as a phone writes it: EXIF with GPS coordinates and a camera serial."""
    image = Image.new("RGB", size)
    for x in range(0, size[0], 50):  # some structure, so it is not all one colour
        image.paste((x % 256, 80, 160), (x, 0, x + 25, size[1]))
    exif = Image.Exif()
    exif[CAMERA_SERIAL] = "SN-4F2A-99"
    exif[0x0112] = orientation
    exif.get_ifd(GPS_IFD)[GPS_LATITUDE] = (48.0, 51.0, 24.0)
    exif.get_ifd(GPS_IFD)[1] = "N"
    out = io.BytesIO()
    image.save(out, format=kind, exif=exif, quality=85)
    return out.getvalue()


def pdf(text: str = "Discharge instructions", padding: int = 0) -> bytes:
    """A small, valid PDF of one page (its stream uncompressed)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode() + b" " * padding
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{number} 0 obj\n".encode() + body + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for offset in offsets:
        out.write(f"{offset:010d} 00000 n \n".encode())
    out.write(f"trailer << /Size {len(objects) + 1} /Root 1 0 R >>\n".encode())
    out.write(f"startxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` pixels (a decompression
    bomb's header: decoding it would allocate width * height pixels)."""
    out = io.BytesIO()
    Image.new("RGB", (1, 1)).save(out, format="PNG")
    data = bytearray(out.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17]))
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def pdf_with_object_stream(catalog_extra: bytes, hidden: bytes = b"", zeros: int = 0) -> bytes:
    """A PDF 1.5 whose catalog, page tree and ``hidden`` object (number 5) sit in a
    compressed object stream, indexed by a cross-reference stream, as producers of
    PDF 1.5 and later write them: none of their bytes appear in the file as they are.
    ``zeros`` pads the object stream with that many zero bytes before compression (a
    decompression bomb), without ever holding them in memory at once."""
    inner = [
        (1, b"<< /Type /Catalog /Pages 2 0 R " + catalog_extra + b" >>"),
        (2, b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>"),
        (3, b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>"),
    ]
    if hidden:
        inner.append((5, hidden))
    bodies, header, position = b"", b"", 0
    for number, body in inner:
        header += f"{number} {position} ".encode()
        bodies += body + b"\n"
        position += len(body) + 1
    compressor = zlib.compressobj(9)
    pieces = [compressor.compress(header + bodies)]
    block = b"\0" * 1_000_000
    for start in range(0, zeros, len(block)):
        pieces.append(compressor.compress(block[: min(len(block), zeros - start)]))
    packed = b"".join(pieces) + compressor.flush()
    out = io.BytesIO()
    out.write(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    stream_offset = out.tell()
    out.write(
        b"4 0 obj\n<< /Type /ObjStm /N "
        + str(len(inner)).encode()
        + b" /First "
        + str(len(header)).encode()
        + b" /Filter /FlateDecode /Length "
        + str(len(packed)).encode()
        + b" >>\nstream\n"
        + packed
        + b"\nendstream\nendobj\n"
    )
    xref_offset = out.tell()
    size = 7
    rows = [b"\x00\x00\x00\x00\xff\xff"]  # object 0: free
    index_in_stream = {number: i for i, (number, _) in enumerate(inner)}
    for number in range(1, size):
        if number in index_in_stream:
            rows.append(b"\x02" + struct.pack(">I", 4) + struct.pack(">B", index_in_stream[number]))
        elif number == 4:
            rows.append(b"\x01" + struct.pack(">I", stream_offset) + b"\x00")
        elif number == 6:
            rows.append(b"\x01" + struct.pack(">I", xref_offset) + b"\x00")
        else:
            rows.append(b"\x00\x00\x00\x00\x00\x00")
    table = zlib.compress(b"".join(rows))
    out.write(
        b"6 0 obj\n<< /Type /XRef /Size "
        + str(size).encode()
        + b" /W [1 4 1] /Root 1 0 R /Filter /FlateDecode /Length "
        + str(len(table)).encode()
        + b" >>\nstream\n"
        + table
        + b"\nendstream\nendobj\n"
    )
    out.write(f"startxref\n{xref_offset}\n%%EOF\n".encode())
    return out.getvalue()
