"""Decoding images from bytes nobody vouched for: bounded before any pixel is decoded.

A PNG of 20000x20000 pixels compresses to a few hundred KB and decodes to over a GB, so the byte size is only half a
bound: the header's width and height are checked against `max_pixels` before `load()`. Only PNG and JPEG are
opened (`formats=`): Pillow would otherwise try every plugin it has, some of which call external programs (EPS).
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["DATASET_MAX_PIXELS", "MAX_JPEG_MARKERS", "MAX_JPEG_SCANS", "ImageProblem", "fit", "open_image"]

FORMATS = ("PNG", "JPEG")
# Dataset images (the team's own files) are bounded too, but loosely: Pillow's own bomb threshold.
DATASET_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


# Scans a JPEG may have. libjpeg decodes a progressive JPEG scan by scan, each a pass over the whole image: a few
# KB of a 2048x2048 image repeating one refinement scan 200,000 times would cost minutes of CPU. Encoders write
# one scan (baseline) or about 10 (progressive); the bound leaves room for unusual progressions.
MAX_JPEG_SCANS = 64
# Markers (segments) a JPEG may have: a camera's file has tens (tables, EXIF, ICC and XMP chunks). The bound keeps
# the walk that counts scans cheap, and Pillow's own pass over the header segments (~2.4 s of CPU per 1M).
MAX_JPEG_MARKERS = 1000
# After SOS, entropy-coded data runs up to the next marker: 0xFF followed by anything but a stuffed 0x00, a
# restart marker (RST0-7, inside the data) or a fill byte (0xFF, which precedes the marker).
_NEXT_MARKER = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")
_STANDALONE = frozenset((0x01, *range(0xD0, 0xD9)))  # TEM, RST0-7, SOI: markers without a length


class ImageProblem(ValueError):
    """Why bytes are not a usable image; the message names the rule and never echoes the bytes."""


def check_jpeg_markers(data: bytes) -> None:
    """ImageProblem if the JPEG in `data` has more than MAX_JPEG_SCANS scans (SOS markers) or MAX_JPEG_MARKERS
    markers. The walk reads markers and segment lengths only, as the decoder does, skipping each scan's
    entropy-coded data in one search; it stops at EOI, where the file breaks (the decoder then says why), or one
    past a bound."""
    scans = markers = 0
    at = 2  # after SOI
    while (found := _NEXT_MARKER.search(data, at)) is not None:  # also skips fill and stray bytes, as libjpeg does
        marker, at = data[found.start() + 1], found.end()
        markers += 1
        if markers > MAX_JPEG_MARKERS:
            raise ImageProblem(f"JPEG has more than {MAX_JPEG_MARKERS} markers: re-encode it")
        if marker == 0xD9:  # EOI
            return
        if marker in _STANDALONE:
            continue
        length = int.from_bytes(data[at : at + 2], "big")
        if length < 2 or at + length > len(data):
            return
        at += length  # the segment; after SOS, its header (the entropy-coded data is what the next search skips)
        if marker == 0xDA:
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise ImageProblem(
                    f"JPEG has more than {MAX_JPEG_SCANS} scans (progressive JPEGs have about 10): re-encode it"
                )


def open_image(data: bytes, *, max_bytes: int | None = None, max_pixels: int = DATASET_MAX_PIXELS) -> Image.Image:
    """The decoded RGB image in `data`, or ImageProblem: too many bytes, not PNG/JPEG, too many pixels, damaged."""
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageProblem(f"image is {len(data)} bytes, more than the {max_bytes} allowed")
    if data[:3] == b"\xff\xd8\xff":  # what Pillow opens as a JPEG: its scans are counted before any is decoded
        check_jpeg_markers(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as image:
                width, height = image.size  # from the header: nothing is decoded yet
                if width * height > max_pixels:
                    raise ImageProblem(f"image is {width}x{height} pixels, more than the {max_pixels} allowed")
                return image.convert("RGB")
    except UnidentifiedImageError:
        raise ImageProblem("not a PNG or JPEG image") from None
    except ImageProblem:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageProblem(f"image has more than the {max_pixels} pixels allowed") from None
    except Exception as e:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError, struct.error... for damaged files
        raise ImageProblem(f"image does not decode ({type(e).__name__}: {e})") from None


def fit(image: Image.Image, size: int) -> np.ndarray:
    """Center-cropped and resized to uint8 pixels [3, size, size], as featurize and serving both fit images."""
    fitted = ImageOps.fit(image, (size, size), Image.Resampling.BILINEAR)
    return np.asarray(fitted).transpose(2, 0, 1)
