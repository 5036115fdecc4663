"""Build the everyday breadth set (issue 24) from photos shipped inside pip packages.

The manifest ``everyday.json`` names each photo's package, file and licence; the photos themselves are
never copied into the repository: they are read from the installed package (or from the byte-identical
copy in ``sample_data/``) and written, with their grayscale, 1-bit and low-light variants, to a folder.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from retrieval.images import load_image

MANIFEST = Path(__file__).with_name("everyday.json")
SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_data"
VARIANTS = ("orig", "gray", "1bit", "dark")
PACKAGE_MODULES = {"scikit-image": "skimage", "scikit-learn": "sklearn", "matplotlib": "matplotlib"}


@dataclass(frozen=True)
class EverydayPhoto:
    """One photo of the set: its file name, concept, the variant made and where its pixels came from."""

    name: str
    concept: str
    variant: str
    source: str
    licence: str


def load_manifest(path: Path = MANIFEST) -> dict:
    """The manifest: ``photos`` (package, path, licence, variants) and ``queries`` per concept."""
    return json.loads(path.read_text(encoding="utf-8"))


def package_root(package: str, search_paths: list[str] | None = None) -> Path | None:
    """The folder holding ``package``'s top-level module (found without importing it), or None."""
    module = PACKAGE_MODULES.get(package, package)
    if search_paths:
        for p in search_paths:
            if (Path(p) / module).is_dir():
                return Path(p)
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]).parent


def locate(entry: dict, search_paths: list[str] | None = None) -> Path | None:
    """The source file of a manifest photo: the installed package's file, else its sample_data copy."""
    root = package_root(entry["package"], search_paths)
    if root is not None and (root / entry["path"]).is_file():
        return root / entry["path"]
    sample = entry.get("sample")
    if sample and (SAMPLE_DIR / sample).is_file():
        return SAMPLE_DIR / sample
    return None


def make_variant(image: Image.Image, variant: str) -> Image.Image:
    """``orig``; ``gray`` (luminance); ``1bit`` (dithered black and white); ``dark`` (dim light, gamma 2.2, x0.35)."""
    rgb = image.convert("RGB")
    if variant == "orig":
        return rgb
    if variant == "gray":
        return ImageOps.grayscale(rgb).convert("RGB")
    if variant == "1bit":
        return rgb.convert("L").convert("1").convert("RGB")
    if variant == "dark":
        lut = [round(255 * 0.35 * (i / 255) ** 2.2) for i in range(256)]
        return rgb.point(lut * 3)
    raise ValueError(f"unknown variant {variant!r}")


def build(out_dir: Path, search_paths: list[str] | None = None, manifest: dict | None = None) -> list[EverydayPhoto]:
    """Write every available photo and variant to ``out_dir`` as PNG; return what was written.

    Photos whose package is not installed (and that have no sample_data copy) are left out.
    """
    manifest = manifest or load_manifest()
    out_dir.mkdir(parents=True, exist_ok=True)
    photos: list[EverydayPhoto] = []
    for entry in manifest["photos"]:
        src = locate(entry, search_paths)
        if src is None:
            continue
        base = load_image(src)  # as the indexer decodes it: alpha over white, 8-bit RGB
        if entry.get("crop"):
            base = base.crop(tuple(entry["crop"]))
        origin = f"{entry['package']}:{entry['path']}" if SAMPLE_DIR not in src.parents else f"sample_data/{src.name}"
        for variant in entry["variants"]:
            name = f"{entry['id']}_{variant}.png"
            target = out_dir / name
            if not target.exists():
                make_variant(base, variant).save(target)
            photos.append(EverydayPhoto(name, entry["concept"], variant, origin, entry["licence"]))
    return photos


def relevant(photos: list[EverydayPhoto], manifest: dict | None = None) -> list[tuple[str, set[str]]]:
    """(query, names of its relevant photos) for every query whose concept has a photo in ``photos``."""
    manifest = manifest or load_manifest()
    also = manifest.get("also_relevant", {})
    by_concept: dict[str, set[str]] = {}
    for p in photos:
        by_concept.setdefault(p.concept, set()).add(p.name)
    out = []
    for concept, queries in manifest["queries"].items():
        if concept not in by_concept:
            continue
        names = set(by_concept[concept])
        for other in also.get(concept, []):
            names |= by_concept.get(other, set())
        out.extend((q, names) for q in queries)
    return out


if __name__ == "__main__":  # pragma: no cover - manual use
    got = build(Path(sys.argv[1]), sys.argv[2:] or None)
    print(f"{len(got)} photos over {len({p.concept for p in got})} concepts")
