"""Per-format decode cost (issue 22): ms per photo through the indexer's own load path, side by side.

The same real photos (``sample_data/``, two of them upscaled to about 12 MP with mild sensor-like noise)
are written as JPEG, PNG, HEIC (without and, as phones write it, with a 320-px embedded thumbnail),
AVIF and DNG (a 12-bit RGGB mosaic of the photo, made with ``pidng`` as the tests do), then decoded as
``indexer.sync.load_file`` decodes them: the file's bytes in a named stream through
``load_image_and_info`` at the model's 224-px input (JPEG draft scaling, a HEIC's embedded thumbnail
where it is large enough, the RAW path of ``retrieval/raw.py``). Formats are timed interleaved, repeat
after repeat, so load on a shared machine falls on all of them alike.
``python -m benchmarks.formats [--repeats N] [--json]``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from retrieval.images import HEIF_AVAILABLE, IMAGE_EXTENSIONS, load_image_and_info

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_data"
PHOTOS = ("astronaut_eileen_collins.png", "cat_chelsea.png", "chinese_pagoda_lake.jpg", "espresso_cup.png",
          "grace_hopper_portrait.jpg", "hubble_deep_field.jpg", "retina_fundus.jpg")
UPSCALED = {"chinese_pagoda_lake.jpg": (4240, 2832), "hubble_deep_field.jpg": (3712, 3236)}  # ~12 MP each
FORMATS = ("jpeg", "png", "heic", "heic-thumb", "avif", "dng")
SUFFIX = {"jpeg": ".jpg", "png": ".png", "heic": ".heic", "heic-thumb": ".heic", "avif": ".avif", "dng": ".dng"}
PHONE_THUMBNAIL = 320  # the box of the thumbnail a phone embeds in its HEIC photos (320 x 240 at 4:3)
TARGET = 224
# XYZ -> linear sRGB (x 10000), so the "camera" of these DNGs sees linear sRGB (as in tests/test_formats.py).
XYZ_TO_SRGB = [32406, -15372, -4986, -9689, 18758, 415, 557, -2040, 10570]


def make_dng(rgb_image: Image.Image, orientation: int = 1, taken: str = "2021:07:04 10:20:30") -> bytes:
    """An uncompressed 12-bit RGGB DNG whose mosaic samples the (linearised) pixels of ``rgb_image``, with
    an EXIF ``orientation`` and date ``taken``; the tests make their RAW files with it too."""
    from pidng.core import RAW2DNG, DNGTags, Tag
    from pidng.defs import CalibrationIlluminant, CFAPattern, DNGVersion, PhotometricInterpretation

    rgb = np.asarray(rgb_image.convert("RGB"), dtype=np.float64)
    h, w = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
    lin = np.rint((rgb[:h, :w] / 255.0) ** 2.2 * 4095).astype(np.uint16)
    mosaic = np.empty((h, w), np.uint16)
    mosaic[0::2, 0::2] = lin[0::2, 0::2, 0]
    mosaic[0::2, 1::2] = lin[0::2, 1::2, 1]
    mosaic[1::2, 0::2] = lin[1::2, 0::2, 1]
    mosaic[1::2, 1::2] = lin[1::2, 1::2, 2]
    tags = DNGTags()
    for tag, value in [
        (Tag.ImageWidth, w), (Tag.ImageLength, h), (Tag.TileWidth, w), (Tag.TileLength, h),
        (Tag.Orientation, orientation), (Tag.SamplesPerPixel, 1), (Tag.BitsPerSample, 12),
        (Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array),
        (Tag.CFARepeatPatternDim, [2, 2]), (Tag.CFAPattern, CFAPattern.RGGB), (Tag.BlackLevel, 0),
        (Tag.WhiteLevel, 4095), (Tag.ColorMatrix1, [[v, 10000] for v in XYZ_TO_SRGB]),
        (Tag.CalibrationIlluminant1, CalibrationIlluminant.D65), (Tag.AsShotNeutral, [[1, 1], [1, 1], [1, 1]]),
        (Tag.Make, "Test"), (Tag.Model, "Mosaic"), (Tag.DNGVersion, DNGVersion.V1_4),
        (Tag.DNGBackwardVersion, DNGVersion.V1_2), (Tag.DateTimeOriginal, taken), (Tag.DateTime, taken),
    ]:
        tags.set(tag, value)
    writer = RAW2DNG()
    writer.options(tags, path="", compress=False)
    return bytes(writer.convert(mosaic))


def encode(image: Image.Image, fmt: str) -> bytes:
    """``image`` in ``fmt`` at everyday camera/phone settings (JPEG q90, HEIC q90, AVIF q80)."""
    if fmt == "dng":
        return make_dng(image)
    buf = io.BytesIO()
    if fmt == "jpeg":
        image.save(buf, "JPEG", quality=90)
    elif fmt == "png":
        image.save(buf, "PNG")
    elif fmt == "heic":
        image.save(buf, "HEIF", quality=90)
    elif fmt == "heic-thumb":
        image.save(buf, "HEIF", quality=90, thumbnails=[PHONE_THUMBNAIL])
    elif fmt == "avif":
        image.save(buf, "AVIF", quality=80, speed=8)
    return buf.getvalue()


def available_formats() -> list[str]:
    """The formats this installation can both write here and index."""
    out = []
    for fmt in FORMATS:
        if SUFFIX[fmt] not in IMAGE_EXTENSIONS or (fmt.startswith("heic") and not HEIF_AVAILABLE):
            continue
        if fmt == "dng":
            try:
                import pidng.core  # noqa: F401
            except ImportError:
                continue
        out.append(fmt)
    return out


def source_photos() -> list[tuple[str, Image.Image]]:
    """(label, RGB image): the sample photos as they are, and the upscaled ~12 MP ones."""
    rng = np.random.default_rng(0)
    out = []
    for name in PHOTOS:
        rgb = Image.open(SAMPLE_DIR / name).convert("RGB")
        out.append((name, rgb))
        if name in UPSCALED:
            big = np.asarray(rgb.resize(UPSCALED[name], Image.Resampling.LANCZOS), dtype=np.int16)
            big = big + rng.normal(0, 3, big.shape).round().astype(np.int16)  # sensor-like noise, for real file sizes
            out.append((f"{name}@12MP", Image.fromarray(np.clip(big, 0, 255).astype(np.uint8), "RGB")))
    return out


def decode_once(path: str) -> tuple[float, tuple[int, int]]:
    """Seconds to read and decode one file as ``indexer.sync.load_file`` does, and the decoded size."""
    t0 = time.perf_counter()
    with open(path, "rb") as fh:
        stream = io.BytesIO(fh.read())
    stream.name = path
    image, _ = load_image_and_info(stream, target_size=TARGET)
    return time.perf_counter() - t0, image.size


def run_formats(out_dir: Path, repeats: int = 5, log=lambda s: None) -> dict:
    """Write every photo in every format to ``out_dir``, then time decoding them interleaved."""
    formats = available_formats()
    files: dict[tuple[str, str], str] = {}
    sizes: dict[tuple[str, str], int] = {}
    for label, image in source_photos():
        mp = image.width * image.height / 1e6
        for fmt in formats:
            path = out_dir / f"{label.replace('@', '_').replace('.', '_')}_{fmt.replace('-', '_')}{SUFFIX[fmt]}"
            if not path.exists():
                t0 = time.perf_counter()
                path.write_bytes(encode(image, fmt))
                log(f"wrote {path.name} ({mp:.1f} MP) in {time.perf_counter() - t0:.1f}s")
            files[(label, fmt)] = str(path)
            sizes[(label, fmt)] = path.stat().st_size
    times: dict[tuple[str, str], list[float]] = {k: [] for k in files}
    decoded: dict[tuple[str, str], tuple[int, int]] = {}
    for k, path in files.items():  # warm-up: first-use imports and codec set-up are not timed
        decode_once(path)
    for _ in range(repeats):
        for k, path in files.items():
            dt, decoded[k] = decode_once(path)
            times[k].append(dt)
    groups = {"photo": [p for p in files if "@12MP" not in p[0]], "12mp": [p for p in files if "@12MP" in p[0]]}
    table = {}
    for group, keys in groups.items():
        for fmt in formats:
            ks = [k for k in keys if k[1] == fmt]
            if not ks:
                continue
            per_photo = [statistics.median(times[k]) * 1000 for k in ks]
            table[f"{group}/{fmt}"] = {
                "photos": len(ks),
                "ms_per_photo": round(statistics.mean(per_photo), 2),
                "max_ms": round(max(per_photo), 2),
                "mean_file_kb": round(statistics.mean(sizes[k] for k in ks) / 1024, 1),
                "decoded_sizes": sorted({f"{decoded[k][0]}x{decoded[k][1]}" for k in ks}),
            }
    return {"formats": formats, "repeats": repeats, "target_size": TARGET, "results": table}


def main(argv: list[str] | None = None) -> int:
    """CLI entry: prints the table (``--json``: only JSON on stdout, progress on stderr)."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.formats", description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cache-dir", type=Path, default=None, help="keep the generated files here (reused)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    log = (lambda s: print(s, file=sys.stderr))
    with tempfile.TemporaryDirectory() as tmp:
        out = args.cache_dir or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        res = run_formats(out, args.repeats, log)
    res["cpu_threads"] = os.cpu_count()
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        print(f"{'group/format':14} {'photos':>6} {'ms/photo':>9} {'max ms':>8} {'file KB':>9}  decoded")
        for key, r in res["results"].items():
            print(f"{key:14} {r['photos']:6} {r['ms_per_photo']:9.2f} {r['max_ms']:8.2f} {r['mean_file_kb']:9.1f}  "
                  f"{', '.join(r['decoded_sizes'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
