"""Tests of image decoding: only a 64x64 RGB JPEG is decoded, anything else is refused with a
reason that names the file, before its pixels are ever allocated; and the decode policy decides
whether such an image blocks the run or is quarantined."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from animal_assets.core.formats import decode_image
from animal_assets.core.ingest import read_dataset
from tests.fixtures import crafted_jpeg, crafted_png, image_bytes, image_paths, make_dataset


def _violations(raw) -> list[dict]:
    return json.loads(Path(raw.violations_path).read_text())


def test_decode_good_image_matches_pil():
    data = image_bytes(3)
    array, reason, info = decode_image(data, name="imgs/a.jpg")
    assert reason is None and array.shape == (64, 64, 3) and array.dtype == np.uint8
    assert np.array_equal(array, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    assert info == {"format": "JPEG", "width": 64, "height": 64, "mode": "RGB", "bytes": len(data),
                    "exif_transposed": False}


BAD_IMAGES = {
    "zero_byte": (b"", "empty"),
    "truncated": (image_bytes(1)[: len(image_bytes(1)) // 2], "does not decode"),
    "not_an_image": (b"hello, world" * 10, "not an image"),
    "png_renamed": (image_bytes(1, fmt="PNG"), "PNG image, not a JPEG"),
    "gif": (image_bytes(1, fmt="GIF", mode="P"), "GIF image, not a JPEG"),
    "cmyk": (image_bytes(1, mode="CMYK"), "colour mode CMYK"),
    "grayscale": (image_bytes(1, mode="L"), "colour mode L"),
    "rgba_png": (image_bytes(1, mode="RGBA", fmt="PNG"), "not a JPEG"),
    "63x64": (image_bytes(1, size=(63, 64)), "63x64 pixels"),
    "128x128": (image_bytes(1, size=(128, 128)), "128x128 pixels"),
    "over_size_cap": (image_bytes(1) + b"\0" * (1 << 20), "byte limit"),
    "jpeg_20000": (crafted_jpeg(20000, 20000), "decompression bomb"),
    "jpeg_10000_warning": (crafted_jpeg(10000, 10000), "decompression bomb"),
    "jpeg_4000": (crafted_jpeg(4000, 4000), "4000x4000 pixels"),
    "png_20000": (crafted_png(20000, 20000), "decompression bomb"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_decode_refuses_bad_images_without_loading(case, monkeypatch):
    data, detail = BAD_IMAGES[case]
    loaded: list[tuple[int, int]] = []
    original = ImageFile.ImageFile.load

    def spy(im):
        loaded.append(im.size)
        return original(im)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    array, reason, info = decode_image(data, name=f"imgs/{case}.jpg")
    assert array is None and reason.startswith(f"imgs/{case}.jpg ") and detail in reason
    assert all(size == (64, 64) for size in loaded), "pixels of a non-64x64 image were decoded"
    assert info["bytes"] == len(data)


def test_huge_header_is_reported_in_info():
    _, _, info = decode_image(crafted_jpeg(4000, 3000), name="x.jpg")
    assert (info["width"], info["height"], info["format"]) == (4000, 3000, "JPEG")


@pytest.mark.parametrize("dec, blocking", [("quarantine", False), ("strict", True)])
def test_decode_policy_alone(tmp_path, dec, blocking):
    folder = make_dataset(tmp_path, n=4, k=2)
    image_paths(folder)[0].write_bytes(image_bytes(0, size=(63, 64)))
    raw = read_dataset(folder, tmp_path / "out", decode_policy=dec)
    assert raw.blocking is blocking and raw.n_usable == 3
    assert [v["rule"] for v in _violations(raw)] == ["image_decodes"]
