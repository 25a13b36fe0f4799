"""Images re-encoded from their pixels alone, and their thumbnails (Pillow).

What a camera writes beside the pixels (EXIF with GPS coordinates, the camera's
serial number, XMP, comments) is dropped: the stored file is a new encoding of the
decoded image, oriented as the camera said, with only its colour profile kept. HEIC
is stored as JPEG, which every browser shows. Decoding is bounded: a file whose
header declares more than ``max_pixels`` is refused before its pixels are decoded,
and a truncated or damaged file is refused, never half-decoded.

Synchronous and CPU-bound: the hub runs it on a small thread pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pillow_heif
from PIL import Image, ImageOps, UnidentifiedImageError

from hub.attachments.inspect import FileKind
from hub.core.errors import UnsupportedType

pillow_heif.register_heif_opener()

# Pillow's own safety net stays below ours: its warning is raised as an error.
PILLOW_PIXEL_LIMIT = Image.MAX_IMAGE_PIXELS or 89_478_485
THUMBNAIL_SIDE = 320
MAX_SIDE = 30_000  # a 30,000-pixel side is no photo: a long strip meant to exhaust memory

_DECODER = {
    FileKind.JPEG: "JPEG",
    FileKind.PNG: "PNG",
    FileKind.WEBP: "WEBP",
    FileKind.HEIC: "HEIF",
}
# What each kind is stored as: HEIC becomes JPEG.
_STORED = {
    FileKind.JPEG: FileKind.JPEG,
    FileKind.PNG: FileKind.PNG,
    FileKind.WEBP: FileKind.WEBP,
    FileKind.HEIC: FileKind.JPEG,
}


class ImageRefused(UnsupportedType):
    default_message = "the image cannot be read"


@dataclass(frozen=True, slots=True)
class Processed:
    kind: FileKind  # what the stored file is
    width: int
    height: int
    image: Path
    thumbnail: Path


def process(source: Path, kind: FileKind, max_pixels: int, out_dir: Path) -> Processed:
    """Decode ``source`` as ``kind``; write the clean image and its thumbnail (JPEG,
    at most 320 pixels a side) to ``out_dir``. Raises ImageRefused."""
    try:
        # Over Pillow's own limit, open() warns (an error where warnings are errors).
        with Image.open(source, formats=[_DECODER[kind]]) as opened:
            width, height = opened.size
            if width * height > max_pixels or max(width, height) > MAX_SIDE:
                raise ImageRefused(
                    f"the image is {width}x{height}: at most {max_pixels} pixels "
                    f"and {MAX_SIDE} a side"
                )
            opened.load()
            image = ImageOps.exif_transpose(opened)
            if image.mode == "P":
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRefused(f"the image declares too many pixels: at most {max_pixels}") from None
    except UnidentifiedImageError:
        raise ImageRefused("the image cannot be read") from None
    except (OSError, SyntaxError, ValueError, EOFError):
        raise ImageRefused("the image is damaged or truncated") from None
    stored = _STORED[kind]
    icc = image.info.get("icc_profile")
    image.info = {}  # Pillow writes XMP and comments back from here: nothing of it stays
    options: dict[str, object] = {"exif": b""}
    if icc:
        options["icc_profile"] = icc
    if stored is FileKind.JPEG:
        image = _without_alpha(image)
        options.update(quality=90, optimize=True)
    elif stored is FileKind.WEBP:
        options.update(quality=90)
    elif image.mode not in ("1", "L", "LA", "I", "P", "RGB", "RGBA"):
        image = image.convert("RGBA")
    clean = out_dir / f"clean.{stored.value}"
    image.save(clean, format=_DECODER[stored], **options)
    thumbnail = _without_alpha(image.copy())
    thumbnail.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    thumb = out_dir / "thumbnail.jpeg"
    thumbnail.save(thumb, format="JPEG", quality=80, exif=b"")
    return Processed(stored, image.width, image.height, clean, thumb)


def _without_alpha(image: Image.Image) -> Image.Image:
    """RGB, transparent parts on white (JPEG has no alpha channel)."""
    if image.mode in ("RGBA", "LA"):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image if image.mode == "RGB" else image.convert("RGB")
