"""Safe decoding of untrusted face images, content sniffing, and the bundled sample face.

``decode_face_image`` is the only way the project turns uploaded bytes into pixels. It never
relies on Pillow's process-wide ``Image.MAX_IMAGE_PIXELS`` or on the ``warnings`` filters (both
global, and the latter not thread-safe): it sniffs the format from the magic bytes, reads the
dimensions from the header itself (PNG ``IHDR``, WebP ``VP8``/``VP8L``/``VP8X``) before any
decoder object is built, opens the file with exactly one Pillow plugin (so no other parser sees
the bytes and ``Image.open``'s global bomb check is not involved), checks the dimensions Pillow
read against our own limits, and only then decodes. Truncated files fail: this module never
enables ``ImageFile.LOAD_TRUNCATED_IMAGES``.

Error codes (``InvalidInput.code``, always with ``field="face"``):

``NOT_AN_IMAGE``               empty, not an image, or a header Pillow cannot parse
``UNSUPPORTED_IMAGE_FORMAT``   an image, but not PNG, JPEG or WebP (GIF, BMP, TIFF, SVG, HEIC...)
``IMAGE_TOO_LARGE``            more bytes than ``max_bytes`` or a side longer than ``max_side``
``DECOMPRESSION_BOMB``         more pixels than ``max_pixels``, or an oversized compressed chunk
``TRUNCATED_IMAGE``            the header is fine but the pixel data is cut short or corrupt
``FACE_TOO_SMALL``             a side shorter than ``min_side`` (too little of a face to keep)

Memory: ``max_area`` scales the decoded image down (aspect kept) to at most that many pixels —
the worker passes the engine's condition area, so a legal 4096² face is held at the size the model
uses, not at 64 MiB — and JPEGs are decoded at a reduced DCT scale when that suffices. ``reserve``
(a context manager factory taking the byte count) is held around the full-size decode, so that a
caller can bound how many large decodes run at once.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext, suppress

from PIL import (
    Image,
    ImageDraw,
    ImageFile,
    ImageOps,
    JpegImagePlugin,
    PngImagePlugin,
    WebPImagePlugin,
)

from f2p_errors import InvalidInput

MIB = 1024 * 1024
DEFAULT_MAX_BYTES = 10 * MIB
DEFAULT_MAX_SIDE = 4096
DEFAULT_MAX_PIXELS = 4096 * 4096

#: Content types accepted as face images.
ALLOWED_CONTENT_TYPES = ("image/png", "image/jpeg", "image/webp")

_PLUGINS: dict[str, type[ImageFile.ImageFile]] = {
    "image/png": PngImagePlugin.PngImageFile,
    "image/jpeg": JpegImagePlugin.JpegImageFile,
    "image/webp": WebPImagePlugin.WebPImageFile,
}

# (offset, magic, content type); checked in order.
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (0, b"II*\x00", "image/tiff"),
    (0, b"MM\x00*", "image/tiff"),
    (0, b"BM", "image/bmp"),
    (0, b"\x00\x00\x01\x00", "image/x-icon"),
    (0, b"8BPS", "image/vnd.adobe.photoshop"),
    (0, b"qoif", "image/qoi"),
    (0, b"\x00\x00\x00\x0cjP  \r\n\x87\n", "image/jp2"),
    (0, b"\xff\x4f\xff\x51", "image/jp2"),
    (0, b"\xff\x0a", "image/jxl"),
    (0, b"\x00\x00\x00\x0cJXL \r\n\x87\n", "image/jxl"),
)
_FTYP_BRANDS = {b"avif": "image/avif", b"avis": "image/avif", b"heic": "image/heic"}
_FTYP_BRANDS |= {b"heix": "image/heic", b"mif1": "image/heif", b"msf1": "image/heif"}

OCTET_STREAM = "application/octet-stream"


def _reject(code: str, reason: str) -> InvalidInput:
    return InvalidInput("face", reason, code=code)


def sniff_content_type(data: bytes) -> str:
    """The MIME type announced by the magic bytes, or ``application/octet-stream``.

    Recognises the allowed formats (PNG, JPEG, WebP) and the common ones we refuse (GIF, TIFF,
    BMP, ICO, PSD, QOI, JPEG 2000, JPEG XL, AVIF/HEIC, SVG), so that a refusal can say
    "unsupported format" rather than "not an image". Never calls an image decoder.
    """
    head = bytes(data[:64])
    for offset, magic, content_type in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return content_type
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[4:8] == b"ftyp" and head[8:12] in _FTYP_BRANDS:
        return _FTYP_BRANDS[head[8:12]]
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in data[:1024]):
        return "image/svg+xml"
    return OCTET_STREAM


def _header_size(data: bytes, content_type: str) -> tuple[int, int] | None:
    """Dimensions read straight from a PNG or WebP header, or None when not found there.

    This runs before Pillow builds a decoder: libwebp's animation decoder allocates full canvas
    buffers as soon as it is created, so a WebP bomb must be caught from its header alone.
    JPEG dimensions come from Pillow's header parser, which allocates nothing.
    """
    if content_type == "image/png" and len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if content_type != "image/webp" or len(data) < 30:
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
        return width, height
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


def _check_size(size: tuple[int, int], *, max_pixels: int, max_side: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise _reject("NOT_AN_IMAGE", f"image header declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise _reject(
            "DECOMPRESSION_BOMB",
            f"image declares {width}x{height} = {width * height} pixels, "
            f"more than the limit of {max_pixels}",
        )
    if max(width, height) > max_side:
        raise _reject(
            "IMAGE_TOO_LARGE",
            f"image is {width}x{height}, sides must be at most {max_side} pixels",
        )


_DECODE_ERRORS = (
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    TypeError,
    KeyError,
    struct.error,
    zlib.error,
)


def _classify(exc: BaseException, code: str, what: str) -> InvalidInput:
    """Map a Pillow failure to our code: bomb guards first, otherwise ``code``."""
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return _reject("DECOMPRESSION_BOMB", str(exc))
    if isinstance(exc, ValueError) and "too large" in str(exc).lower():
        # A PNG text/ICC chunk that inflates past Pillow's MAX_TEXT_CHUNK / MAX_TEXT_MEMORY.
        return _reject("DECOMPRESSION_BOMB", f"compressed chunk inflates too far: {exc}")
    return _reject(code, f"{what}: {exc}")


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy of a loaded image; transparency is flattened onto white."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB") if image.mode != "RGB" else image


def decode_face_image(
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int = DEFAULT_MAX_SIDE,
    min_side: int = 1,
    max_area: int | None = None,
    reserve: Callable[[int], AbstractContextManager[object]] | None = None,
) -> Image.Image:
    """Decode untrusted bytes into a fully loaded RGB image, or raise ``InvalidInput``.

    Steps: size and format by magic bytes; dimensions from the raw header; open with the one
    matching Pillow plugin; dimensions again from Pillow; decode (reduced for JPEG when
    ``max_area`` allows, under ``reserve``); apply the EXIF orientation; convert to RGB; scale
    down to ``max_area``. Only the first frame of an animated PNG/WebP is used.
    """
    # Step 1. Bytes and format, without any decoder.
    if not data:
        raise _reject("NOT_AN_IMAGE", "image is empty")
    if len(data) > max_bytes:
        raise _reject("IMAGE_TOO_LARGE", f"image is {len(data)} bytes, limit is {max_bytes}")
    content_type = sniff_content_type(data)
    plugin = _PLUGINS.get(content_type)
    if plugin is None:
        if content_type == OCTET_STREAM:
            raise _reject("NOT_AN_IMAGE", "bytes are not a PNG, JPEG or WebP image")
        raise _reject(
            "UNSUPPORTED_IMAGE_FORMAT",
            f"{content_type} is not supported; use PNG, JPEG or WebP",
        )

    # Step 2. Dimensions from the raw header, before any decoder object exists.
    header_size = _header_size(data, content_type)
    if header_size is not None:
        _check_size(header_size, max_pixels=max_pixels, max_side=max_side)

    # Step 3. Parse the header with exactly one plugin (Image.open's global check not used).
    try:
        image = plugin(io.BytesIO(data))
    except _DECODE_ERRORS as exc:
        # A header we could read ourselves followed by a failure means the data is cut short.
        code = "NOT_AN_IMAGE" if header_size is None else "TRUNCATED_IMAGE"
        if isinstance(exc, EOFError) or "truncated" in str(exc).lower():
            code = "TRUNCATED_IMAGE"
        raise _classify(exc, code, f"cannot parse the {content_type} header") from exc
    _check_size(image.size, max_pixels=max_pixels, max_side=max_side)
    if min(image.size) < min_side:
        width, height = image.size
        raise _reject(
            "FACE_TOO_SMALL", f"image is {width}x{height}, sides must be at least {min_side} pixels"
        )
    target = _fit(image.size, max_area)
    if target != image.size and content_type == "image/jpeg":
        image.draft("RGB", target)  # decode at 1/2, 1/4 or 1/8 scale: far less memory

    # Step 4. Decode the pixels; the reservation covers the decode and the copies of step 5.
    with reserve(3 * pixel_bytes(image.size, image.mode)) if reserve is not None else nullcontext():
        try:
            image.load()
        except _DECODE_ERRORS as exc:
            raise _classify(exc, "TRUNCATED_IMAGE", f"truncated or corrupt {content_type}") from exc

        # Step 5. Orientation, colour and size.
        # In place: without an orientation tag the default returns a full copy (64 MiB for a
        # 4096² face; issue 7 item 5). A broken EXIF block must not fail a fine image.
        with suppress(Exception):
            ImageOps.exif_transpose(image, in_place=True)
        result = _to_rgb(image)
        target = _fit(result.size, max_area)
        if target != result.size:
            result = result.resize(target, Image.Resampling.LANCZOS, reducing_gap=2.0)
        elif result is image:
            result = image.copy()  # within max_area, so small: detached from the file we close
        result.load()
        image.close()
    return result


def _fit(size: tuple[int, int], max_area: int | None) -> tuple[int, int]:
    """``size`` scaled down (aspect kept, at least 1x1) to at most ``max_area`` pixels."""
    width, height = size
    if max_area is None or width * height <= max_area:
        return size
    scale = (max_area / (width * height)) ** 0.5
    return max(1, int(width * scale)), max(1, int(height * scale))


_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}


def pixel_bytes(size: tuple[int, int], mode: str) -> int:
    """Bytes Pillow allocates for an image of ``size`` and ``mode`` (RGB is stored as 4)."""
    return size[0] * size[1] * _BYTES_PER_PIXEL.get(mode, 4)


# -- the bundled sample face ---------------------------------------------------------------------

_Rgb = tuple[int, int, int]
_SKIN: tuple[_Rgb, ...] = ((255, 224, 189), (241, 194, 125), (224, 172, 105), (198, 134, 66))
_SKIN += ((141, 85, 36), (255, 205, 180))
_HAIR: tuple[_Rgb, ...] = ((35, 25, 20), (90, 56, 37), (165, 107, 70), (230, 190, 120))
_HAIR += ((180, 60, 30), (120, 120, 125))
_IRIS = ((70, 110, 170), (90, 60, 40), (60, 120, 70), (50, 50, 60))


def make_sample_face(size: int = 256, seed: int = 0) -> bytes:
    """PNG bytes of a synthetic cartoon face, deterministic for a given ``(size, seed)``.

    The seed picks the skin, hair, iris and background colours and small shape variations.
    Used as the sample face for demos, tests and load generation.
    """
    rng = random.Random(seed)
    skin, hair, iris = rng.choice(_SKIN), rng.choice(_HAIR), rng.choice(_IRIS)
    background = tuple(rng.randint(170, 235) for _ in range(3))
    s = size / 256  # all coordinates below are drawn on a 256 grid and scaled

    def box(x0: float, y0: float, x1: float, y1: float) -> tuple[int, int, int, int]:
        return round(x0 * s), round(y0 * s), round(x1 * s), round(y1 * s)

    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    line = max(1, round(3 * s))
    dark = tuple(max(0, c - 70) for c in skin)

    # Hair behind the head, neck, shoulders.
    draw.ellipse(box(52, 30, 204, 200), fill=hair)
    draw.rectangle(box(108, 180, 148, 230), fill=skin)
    draw.ellipse(box(40, 215, 216, 300), fill=tuple(rng.randint(40, 200) for _ in range(3)))
    # Ears and face.
    draw.ellipse(box(58, 110, 82, 150), fill=skin, outline=dark, width=line)
    draw.ellipse(box(174, 110, 198, 150), fill=skin, outline=dark, width=line)
    jaw = rng.randint(0, 8)
    draw.ellipse(box(70, 56 - jaw, 186, 206 + jaw), fill=skin, outline=dark, width=line)
    # Fringe.
    fringe = rng.randint(70, 95)
    draw.chord(box(66, 40, 190, 2 * fringe - 40), 180, 360, fill=hair)
    # Eyes, irises, pupils, brows.
    eye_y = rng.randint(112, 120)
    for cx in (104, 152):
        draw.ellipse(box(cx - 14, eye_y - 8, cx + 14, eye_y + 8), fill=(255, 255, 255))
        draw.ellipse(box(cx - 7, eye_y - 7, cx + 7, eye_y + 7), fill=iris)
        draw.ellipse(box(cx - 3, eye_y - 3, cx + 3, eye_y + 3), fill=(10, 10, 10))
        brow = rng.randint(-3, 3)
        draw.line(
            box(cx - 15, eye_y - 16 + brow, cx + 15, eye_y - 18 - brow),
            fill=hair,
            width=max(1, round(4 * s)),
        )
    # Nose and mouth.
    draw.line(box(128, eye_y + 10, 121, eye_y + 38), fill=dark, width=line)
    draw.line(box(121, eye_y + 38, 131, eye_y + 38), fill=dark, width=line)
    smile = rng.randint(6, 18)
    mouth_y = eye_y + 52
    draw.arc(
        box(108, mouth_y - smile, 148, mouth_y + smile),
        20,
        160,
        fill=(150, 40, 50),
        width=max(1, round(4 * s)),
    )

    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()
