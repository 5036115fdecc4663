"""Shared fixtures: a fast fake encoder for store/indexer tests, the real default model for end-to-end ones."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
SAMPLE_DATA = REPO / "sample_data"
FLICKR8K = REPO.parent / "shared" / "data" / "flickr8k"


class FakeEncoder:
    """A tiny deterministic encoder: images by their downscaled pixels, texts by their hash.

    Counts what it embeds, so tests can assert that a reindex embeds nothing.
    """

    spec = "fake"
    fingerprint = "fake:1"
    dim = 16
    image_size = 8

    def __init__(self) -> None:
        self.images_embedded = 0
        self.texts_embedded = 0
        self.proj = torch.from_numpy(np.random.default_rng(0).normal(size=(3 * 8 * 8, self.dim)).astype(np.float32))

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        arr = np.asarray(image.convert("RGB").resize((8, 8)), dtype=np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1) - 0.5

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        self.images_embedded += len(pixels)
        v = pixels.reshape(len(pixels), -1) @ self.proj
        return torch.nn.functional.normalize(v, dim=-1).numpy()

    def encode_images(self, images) -> np.ndarray:
        return self.encode_pixels(torch.stack([self.preprocess(i) for i in images]))

    def encode_texts(self, texts) -> np.ndarray:
        self.texts_embedded += len(texts)
        out = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:4], "little")
            v = np.random.default_rng(seed).normal(size=self.dim).astype(np.float32)
            out.append(v / np.linalg.norm(v))
        return np.stack(out) if out else np.zeros((0, self.dim), np.float32)


@pytest.fixture
def fake_encoder() -> FakeEncoder:
    return FakeEncoder()


def make_photo(path: Path, seed: int, size: tuple[int, int] = (64, 48), fmt: str | None = None) -> Path:
    """Write a distinct random-blocks photo (different seeds give clearly different images)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize(size, Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


def wait_for(cond, timeout: float = 10.0, every: float = 0.05):
    """Poll ``cond`` until it returns something truthy; fail after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = cond()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"not within {timeout}s: {getattr(cond, '__name__', cond)}")


def with_date(src: Path, dest: Path, taken: str | None) -> Path:
    """A JPEG copy of ``src`` at ``dest``, with EXIF DateTimeOriginal ``taken`` ("YYYY:MM:DD HH:MM:SS") if given."""
    with Image.open(src) as im:
        img = im.convert("RGB")
    exif = Image.Exif()
    if taken is not None:
        exif.get_ifd(0x8769)[36867] = taken
    dest.parent.mkdir(parents=True, exist_ok=True)
    img.save(dest, "JPEG", exif=exif, quality=90)
    return dest


@pytest.fixture
def photo_dir(tmp_path: Path) -> Path:
    """A folder of 6 distinct photos in a few formats, one in a subfolder."""
    d = tmp_path / "photos"
    for i, name in enumerate(["a.jpg", "b.png", "c.webp", "d.bmp", "sub/e.jpg", "sub/f.tiff"]):
        make_photo(d / name, seed=i)
    return d


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one intra-op thread for a module: tiny fusion models train faster so than on two busy cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def default_encoder():
    """The real bundled encoder (loads once per test session)."""
    from retrieval.encoders import create_encoder

    return create_encoder("default")


@pytest.fixture
def sample_copy(tmp_path: Path) -> Path:
    """A writable copy of sample_data/."""
    dst = tmp_path / "sample_data"
    shutil.copytree(SAMPLE_DATA, dst)
    return dst
