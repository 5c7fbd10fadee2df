"""Decoding images from bytes nobody vouched for: bounded before any pixel is decoded.

A PNG of 20000x20000 pixels compresses to a few hundred KB and decodes to over a GB, so the byte size is only half a
bound: the header's width and height are checked against `max_pixels` before `load()`. Only PNG and JPEG are
opened (`formats=`): Pillow would otherwise try every plugin it has, some of which call external programs (EPS).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

FORMATS = ("PNG", "JPEG")
# Dataset images (the team's own files) are bounded too, but loosely: Pillow's own bomb threshold.
DATASET_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


class ImageProblem(ValueError):
    """Why bytes are not a usable image; the message names the rule and never echoes the bytes."""


def open_image(data: bytes, *, max_bytes: int | None = None, max_pixels: int = DATASET_MAX_PIXELS) -> Image.Image:
    """The decoded RGB image in `data`, or ImageProblem: too many bytes, not PNG/JPEG, too many pixels, damaged."""
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageProblem(f"image is {len(data)} bytes, more than the {max_bytes} allowed")
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
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error... for damaged files
        raise ImageProblem(f"image does not decode ({type(e).__name__}: {e})") from None


def fit(image: Image.Image, size: int) -> np.ndarray:
    """Center-cropped and resized to uint8 pixels [3, size, size], as featurize and serving both fit images."""
    fitted = ImageOps.fit(image, (size, size), Image.Resampling.BILINEAR)
    return np.asarray(fitted).transpose(2, 0, 1)
