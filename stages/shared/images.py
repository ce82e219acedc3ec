"""Image files: reading a lab's images of every common mode, or refusing one by name, and
preparing an image for a network. The extraction stage, find_near_copies and
classify-images all read through here, so new images go through exactly what the
training images went through."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stages.shared.config import StageError, one_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# What Windows and macOS leave in folders of images; skipped like hidden (dot) files.
SYSTEM_FILES = ("thumbs.db", "desktop.ini", "__macosx")

# How read_image_file reads each of Pillow's modes; any other mode is refused.
GREY_MODES = ("1", "L", "LA")  # to grey: black and white as 0 and 255, alpha dropped
COLOUR_MODES = ("P", "PA", "RGB", "RGBA", "CMYK", "YCbCr")  # to RGB: the palette's colours, alpha dropped
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")  # grey, 0..65535 scaled to 0..255
OWN_RANGE_MODES = ("I", "F")  # 32-bit integer and float grey: the image's own min..max scaled to 0..255
IMAGE_MODES = GREY_MODES + COLOUR_MODES + SIXTEEN_BIT_MODES + OWN_RANGE_MODES


def read_image_file(path: Path, header_only: bool = False) -> np.ndarray | None:
    """Decode one image file to uint8 (H, W) grey or (H, W, 3) colour.

    Grey modes stay grey, with black-and-white as 0 and 255; palette, CMYK and YCbCr images
    become RGB; an alpha channel is dropped (the pixels as stored, not blended onto a
    background). 16-bit grey (common in lab TIFF and PNG) is scaled from its full range,
    0..65535, to 0..255. 32-bit integer and float grey have no full range of their own,
    so each such image is scaled from its own darkest pixel (to 0) to its brightest (to
    255), rounded; one with a single value throughout, or with NaN or infinite pixels,
    is refused. Any other mode (LAB, say) is refused, with the file and its mode, as is
    an image larger than Pillow's limit against decompression bombs.

    With ``header_only``, read the format, size and mode but no pixels, a fraction of a
    decode, and return None: a file that is no image, or of a mode refused, stops there;
    one cut short after a valid header only when decoded.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.mode not in IMAGE_MODES:
                raise StageError(
                    f"{path}: image mode {image.mode} is not read here (save it as 8- or 16-bit grey, or RGB)"
                )
            if header_only:
                return None
            image.load()  # Image.open only reads the header; this finds truncation
            if image.mode in SIXTEEN_BIT_MODES:
                pixels = np.asarray(image, dtype=np.float64) * (255 / 65535)
                return np.clip(pixels, 0, 255).astype(np.uint8)
            if image.mode in OWN_RANGE_MODES:
                return scaled_from_own_range(path, image.mode, np.asarray(image, dtype=np.float64))
            grey_or_colour = "L" if image.mode in GREY_MODES else "RGB"
            return np.asarray(image if image.mode == grey_or_colour else image.convert(grey_or_colour))
    except OSError as err:  # unreadable, truncated, or not an image at all
        raise StageError(f"{path}: cannot read image ({one_line(err)})") from None
    except Image.DecompressionBombError as err:  # not an OSError
        raise StageError(f"{path}: refused as a possible decompression bomb ({one_line(err)})") from None


def scaled_from_own_range(path: Path, mode: str, pixels: np.ndarray) -> np.ndarray:
    """float64 pixels of a 32-bit integer or float image to uint8: its lowest value to 0,
    its highest to 255, linearly, rounded to the nearest."""
    if not np.isfinite(pixels).all():
        raise StageError(f"{path}: image mode {mode} with NaN or infinite pixels; cannot scale it to 8 bits")
    low, high = pixels.min(), pixels.max()
    if low == high:
        raise StageError(f"{path}: image mode {mode} of one value ({low:g}) throughout; no range to scale to 8 bits")
    return np.rint((pixels - low) * (255 / (high - low))).astype(np.uint8)


def is_skipped(name: str) -> bool:
    """Whether a file or folder name is one that a folder of images collects by itself."""
    return name.startswith(".") or name.lower() in SYSTEM_FILES


def files_under(folder: Path) -> list[Path]:
    """The files in ``folder`` and its subfolders, sorted, but those ``is_skipped`` names."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file() and not any(is_skipped(part) for part in path.relative_to(folder).parts)
    )


def prepare_image(image: np.ndarray, size: int, mode: str = "RGB") -> np.ndarray:
    """uint8 grey or RGB image -> float32 in 0..255, resized bilinearly to (size, size):
    (size, size, 3) with grey repeated to RGB, or, for ``mode`` ``"L"``, (size, size) grey."""
    from PIL import Image

    picture = Image.fromarray(image).convert(mode)
    if picture.size != (size, size):
        picture = picture.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(picture, dtype=np.float32)
