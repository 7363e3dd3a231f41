"""decode_face_image on good, broken and hostile bytes; sniffing; the sample face."""

from __future__ import annotations

import io
import random
import struct
import zlib

import pytest
from PIL import Image, ImageFile, PngImagePlugin

from f2p_errors import InvalidInput
from schemas.images import decode_face_image, make_sample_face, sniff_content_type

CODES = {
    "NOT_AN_IMAGE",
    "TRUNCATED_IMAGE",
    "DECOMPRESSION_BOMB",
    "IMAGE_TOO_LARGE",
    "UNSUPPORTED_IMAGE_FORMAT",
}


def _face() -> Image.Image:
    return Image.open(io.BytesIO(make_sample_face(128)))


def _encode(fmt: str, image: Image.Image | None = None, **kw) -> bytes:
    out = io.BytesIO()
    (image or _face()).save(out, format=fmt, **kw)
    return out.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_header_only(width: int, height: int) -> bytes:
    """A well-formed PNG whose IHDR claims ``width`` x ``height`` and whose IDAT is tiny."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def _webp_vp8x(width: int, height: int) -> bytes:
    """A WebP extended header claiming a ``width`` x ``height`` canvas."""
    body = b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little")
    body += (height - 1).to_bytes(3, "little")
    chunk = b"VP8X" + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG whose SOF0 marker is patched to claim another size."""
    data = bytearray(_encode("JPEG"))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def _reject(data: bytes, **kw) -> InvalidInput:
    with pytest.raises(InvalidInput) as err:
        decode_face_image(data, **kw)
    assert err.value.field == "face"
    assert err.value.code in CODES
    return err.value


# -- valid images ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_valid_formats_decode_to_loaded_rgb(fmt: str) -> None:
    image = decode_face_image(_encode(fmt))
    assert image.mode == "RGB" and image.size == (128, 128)
    assert image.getpixel((64, 64)) is not None  # pixels are there without the source bytes


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "CMYK", "I;16"])
def test_other_modes_become_rgb(mode: str) -> None:
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    source = _face().convert("RGBA" if mode in ("RGBA", "LA") else "RGB").convert(mode)
    image = decode_face_image(_encode(fmt, source))
    assert image.mode == "RGB" and image.size == (128, 128)


def test_transparency_is_flattened_onto_white() -> None:
    image = decode_face_image(_encode("PNG", Image.new("RGBA", (16, 16), (0, 0, 0, 0))))
    assert image.getpixel((3, 3)) == (255, 255, 255)


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    data = _encode("JPEG", Image.new("RGB", (40, 20), (200, 10, 10)), exif=exif.tobytes())
    assert decode_face_image(data).size == (20, 40)


def test_webp_lossless_and_animated_first_frame() -> None:
    assert decode_face_image(_encode("WEBP", lossless=True)).size == (128, 128)
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0))]
    out = io.BytesIO()
    frames[0].save(out, format="WEBP", save_all=True, append_images=frames[1:], lossless=True)
    assert decode_face_image(out.getvalue()).getpixel((5, 5)) == (255, 0, 0)


# -- refused ---------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"hello world", b"\x00" * 100, b"%PDF-1.7\n..."])
def test_non_images_are_refused(data: bytes) -> None:
    assert _reject(data).code == "NOT_AN_IMAGE"


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "ICO"])
def test_other_image_formats_are_unsupported(fmt: str) -> None:
    error = _reject(_encode(fmt, _face().resize((32, 32))))
    assert error.code == "UNSUPPORTED_IMAGE_FORMAT"
    assert "PNG, JPEG or WebP" in error.reason


def test_svg_is_unsupported() -> None:
    svg = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>'
    assert _reject(svg).code == "UNSUPPORTED_IMAGE_FORMAT"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.6, 0.95])
def test_truncated_files_are_refused(fmt: str, fraction: float) -> None:
    data = _encode(fmt)
    error = _reject(data[: int(len(data) * fraction)])
    assert error.code == "TRUNCATED_IMAGE"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_png_header_claiming_100000_squared_is_a_bomb() -> None:
    error = _reject(_png_header_only(100_000, 100_000))
    assert error.code == "DECOMPRESSION_BOMB"
    assert "10000000000 pixels" in error.reason


def test_bomb_is_refused_even_when_pillow_global_limit_is_off(monkeypatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert _reject(_png_header_only(20_000, 20_000)).code == "DECOMPRESSION_BOMB"
    assert _reject(_webp_vp8x(16_000, 16_000)).code == "DECOMPRESSION_BOMB"
    assert _reject(_jpeg_claiming(30_000, 30_000)).code == "DECOMPRESSION_BOMB"


def test_webp_bomb_is_caught_from_the_header_before_any_decoder() -> None:
    error = _reject(_webp_vp8x(16_384, 16_384))
    assert error.code == "DECOMPRESSION_BOMB"


def test_jpeg_bomb_is_caught_before_load() -> None:
    assert _reject(_jpeg_claiming(60_000, 60_000)).code == "DECOMPRESSION_BOMB"


def test_png_text_chunk_bomb() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "a" * (8 * 1024 * 1024), zip=True)
    data = _encode("PNG", Image.new("RGB", (8, 8)), pnginfo=info)
    assert len(data) < 64 * 1024
    assert _reject(data).code == "DECOMPRESSION_BOMB"


def test_long_side_is_too_large_even_with_few_pixels() -> None:
    error = _reject(_encode("PNG", Image.new("RGB", (5000, 8))))
    assert error.code == "IMAGE_TOO_LARGE"
    assert "at most 4096" in error.reason


def test_limits_are_parameters() -> None:
    data = _encode("PNG")
    assert _reject(data, max_bytes=100).code == "IMAGE_TOO_LARGE"
    assert _reject(data, max_pixels=100 * 100).code == "DECOMPRESSION_BOMB"
    assert _reject(data, max_side=100).code == "IMAGE_TOO_LARGE"
    assert decode_face_image(data, max_bytes=len(data), max_pixels=128 * 128, max_side=128)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_corrupted_bytes_never_escape_as_other_exceptions(fmt: str) -> None:
    original = _encode(fmt)
    rng = random.Random(fmt)
    for _ in range(60):
        data = bytearray(original)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            decode_face_image(bytes(data))
        except InvalidInput as exc:
            assert exc.code in CODES


# -- sniffing and the sample face ------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [
        ("PNG", "image/png"),
        ("JPEG", "image/jpeg"),
        ("WEBP", "image/webp"),
        ("GIF", "image/gif"),
        ("BMP", "image/bmp"),
        ("TIFF", "image/tiff"),
    ],
)
def test_sniff_content_type(fmt: str, content_type: str) -> None:
    assert sniff_content_type(_encode(fmt, _face().resize((16, 16)))) == content_type


def test_sniff_unknown_is_octet_stream() -> None:
    assert sniff_content_type(b"") == "application/octet-stream"
    assert sniff_content_type(b"just text") == "application/octet-stream"
    assert sniff_content_type(b"\x00\x00\x00\x1cftypavif") == "image/avif"


def test_sample_face_is_deterministic_png_and_varies_with_seed() -> None:
    a, b = make_sample_face(), make_sample_face()
    assert a == b and a.startswith(b"\x89PNG")
    assert make_sample_face(seed=1) != a
    image = decode_face_image(make_sample_face(size=512, seed=3))
    assert image.size == (512, 512)
    colours = image.getcolors(maxcolors=512 * 512)
    assert colours is not None and len(colours) > 8  # a drawing, not a flat square
