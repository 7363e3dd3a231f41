"""The result images' encoder options: the request's quality, the worker's encoder effort."""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image

from inference_consumer.config import WorkerConfig
from inference_consumer.upload import encoder_options
from schemas.records import ImageFormat


def _photo_like(side: int = 96) -> Image.Image:
    """Seeded noise over a gradient: detail for the encoder's effort to matter."""
    rng = random.Random(7)
    pixels = bytes(
        min(255, (x + y) + rng.randrange(64)) for y in range(side) for x in range(side * 3)
    )
    return Image.frombytes("RGB", (side, side), pixels)


def _encoded(image: Image.Image, fmt: ImageFormat, options: dict[str, int]) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt.value, **options)
    return out.getvalue()


def test_webp_takes_the_requests_quality_and_the_workers_method() -> None:
    assert encoder_options(ImageFormat.WEBP, 75, WorkerConfig(webp_method=3)) == {
        "quality": 75,
        "method": 3,
    }


def test_png_is_lossless_and_takes_only_the_compression_level() -> None:
    assert encoder_options(ImageFormat.PNG, 75, WorkerConfig(png_compress_level=9)) == {
        "compress_level": 9
    }


def test_jpeg_takes_the_requests_quality() -> None:
    assert encoder_options(ImageFormat.JPEG, 75, WorkerConfig()) == {"quality": 75}


@pytest.mark.parametrize(
    ("fmt", "cheap", "small"),
    [
        (ImageFormat.WEBP, WorkerConfig(webp_method=0), WorkerConfig(webp_method=6)),
        (ImageFormat.PNG, WorkerConfig(png_compress_level=0), WorkerConfig(png_compress_level=9)),
    ],
)
def test_the_effort_reaches_the_encoder_and_the_image_survives(
    fmt: ImageFormat, cheap: WorkerConfig, small: WorkerConfig
) -> None:
    image = _photo_like()
    fast = _encoded(image, fmt, encoder_options(fmt, 90, cheap))
    slow = _encoded(image, fmt, encoder_options(fmt, 90, small))
    assert fast != slow  # the option changed what the encoder did
    for body in (fast, slow):
        decoded = Image.open(io.BytesIO(body))
        assert (decoded.format, decoded.size) == (fmt.value, image.size)
    if fmt is ImageFormat.PNG:  # lossless: every level gives back the same pixels
        assert Image.open(io.BytesIO(fast)).tobytes() == image.tobytes()
        assert len(slow) < len(fast)
