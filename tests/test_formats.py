"""Camera RAW (DNG made here from a real photo's Bayer mosaic), XMP sidecars, RAW+JPEG pairs, corrupt files of
each kind, and that the browser is only ever sent formats it can show."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.formats import make_dng as benchmark_dng
from conftest import FakeEncoder
from indexer.scan import scan_folder
from indexer.sync import Indexer
from retrieval import images
from retrieval.errors import ImageLoadError
from retrieval.images import IMAGE_EXTENSIONS, load_image, load_image_and_info, read_info
from retrieval.search import Searcher
from retrieval.store import Store
from retrieval.terms import stem_of

rawpy = pytest.importorskip("rawpy")
pytest.importorskip("pidng.core")  # the DNGs of these tests are made with it

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"
CAT = SAMPLE / "cat_chelsea.png"  # 451 x 300


def make_dng(photo: Path, orientation: int = 1, taken: str = "2021:07:04 10:20:30") -> bytes:
    """A 12-bit RGGB DNG whose mosaic samples the (linearised) pixels of a real photo."""
    return benchmark_dng(Image.open(photo), orientation, taken)


def correlation(a: Image.Image, b: Image.Image) -> float:
    """Pearson correlation of two images' grey pixels at a common small size."""
    x = np.asarray(a.convert("L").resize((64, 64)), dtype=np.float64).ravel()
    y = np.asarray(b.convert("L").resize((64, 64)), dtype=np.float64).ravel()
    return float(np.corrcoef(x, y)[0, 1])


def index(encoder, db: Path, folder: Path):
    store = Store(db)
    try:
        return Indexer(encoder, store, batch_size=4, show_progress=False).sync(str(folder))
    finally:
        store.close()


# -- RAW decode -----------------------------------------------------------------------------------

def test_raw_extensions_are_indexed_xmp_is_not():
    for ext in (".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2"):
        assert ext in IMAGE_EXTENSIONS and stem_of(f"IMG_1{ext.upper()}") == "IMG_1"
    assert ".xmp" not in IMAGE_EXTENSIONS and not images.is_image_path("IMG_1.CR2.xmp")


@pytest.mark.parametrize("orientation, size", [(1, (225, 150)), (6, (150, 225)), (3, (225, 150))])
def test_dng_demosaics_a_real_photo_upright_with_its_date(tmp_path, orientation, size):
    path = tmp_path / "IMG_0001.DNG"
    path.write_bytes(make_dng(CAT, orientation))
    image, info = load_image_and_info(path, target_size=224)  # pidng writes no preview: half-size demosaic
    assert image.mode == "RGB" and image.size == size
    assert (info.width, info.height) == (size[0] * 2, size[1] * 2) and info.format == "DNG"
    assert info.taken_at == datetime(2021, 7, 4, 10, 20, 30)
    assert read_info(path) == info  # header-only read agrees
    upright = Image.open(CAT).convert("RGB")
    transpose = {1: None, 6: Image.Transpose.ROTATE_270, 3: Image.Transpose.ROTATE_180}[orientation]
    if transpose is not None:
        upright = upright.transpose(transpose)
    assert correlation(image, upright) > 0.9  # the photo itself, the right way up
    wrong = upright.transpose(Image.Transpose.ROTATE_180)
    assert correlation(image, wrong) < 0.6


def test_raw_preview_is_used_when_large_enough(monkeypatch):
    """A JPEG preview at least the model's size is used, rotated by its own EXIF (else by the RAW's flip);
    a smaller one is not. (pidng writes no preview, so the preview LibRaw finds is stood in for.)"""
    import io

    from retrieval import raw as raw_mod

    cat = Image.open(CAT).convert("RGB")

    def preview_jpeg(orientation: int) -> bytes:
        buf = io.BytesIO()
        exif = Image.Exif()
        exif[0x0112] = orientation
        cat.save(buf, "JPEG", quality=90, exif=exif.tobytes())
        return buf.getvalue()

    for raw_flip, preview_orientation, size in ((6, 1, (300, 451)), (1, 8, (300, 451)), (1, 1, (451, 300))):
        jpeg = preview_jpeg(preview_orientation)
        monkeypatch.setattr(raw_mod, "_preview", lambda raw, j=jpeg: Image.open(io.BytesIO(j)))
        dng = make_dng(CAT, orientation=raw_flip)
        big = raw_mod.decode_raw(dng, "x.dng", 224, images.MAX_PIXELS)
        assert big.source == "preview" and big.image.size == size
        assert big.taken_at == datetime(2021, 7, 4, 10, 20, 30)
    small = raw_mod.decode_raw(dng, "x.dng", 400, images.MAX_PIXELS)
    assert small.source == "demosaic" and small.image.size == (225, 150)


def test_raw_bomb_limit_applies(tmp_path, monkeypatch):
    path = tmp_path / "big.dng"
    path.write_bytes(make_dng(CAT))
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(path)


@pytest.mark.parametrize("name", ["cut.dng", "cut.CR2", "cut.heic"])
def test_corrupt_raw_and_heic_are_skipped_with_a_reason(tmp_path, fake_encoder, name):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(SAMPLE / "lake_with_boats.jpg", folder / "lake.jpg")
    if name.endswith(".heic"):
        if not images.HEIF_AVAILABLE:
            pytest.skip("pillow-heif is not installed")
        Image.open(CAT).convert("RGB").save(tmp_path / "full.heic")
        data = (tmp_path / "full.heic").read_bytes()
    else:
        data = make_dng(CAT)
    (folder / name).write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageLoadError) as err:
        load_image(folder / name)
    assert "\n" not in str(err.value) and err.value.reason
    report = index(fake_encoder, tmp_path / "db", folder)
    assert report.added == 1
    assert [(Path(p).name, bool(r)) for p, r in report.skipped] == [(name, True)]


def test_heic_decodes_its_embedded_thumbnail_when_large_enough(tmp_path):
    """A phone's HEIC carries a 320-px thumbnail: at the model's 224 px that is decoded instead of the
    photo, upright and showing the same picture; the header still gives the photo's own size."""
    if not images.HEIF_AVAILABLE:
        pytest.skip("pillow-heif is not installed")
    photo = Image.open(SAMPLE / "lake_with_boats.jpg").convert("RGB")
    big = photo.resize((photo.width * 4, photo.height * 4), Image.Resampling.BICUBIC)
    exif = Image.Exif()
    exif[0x0112] = 6  # held upright: the stored pixels are turned
    big.save(tmp_path / "IMG_1.HEIC", quality=80, thumbnails=[320], exif=exif.tobytes())
    full, info = load_image_and_info(tmp_path / "IMG_1.HEIC")
    small, small_info = load_image_and_info(tmp_path / "IMG_1.HEIC", target_size=224)
    assert full.height > full.width and (info.width, info.height) == full.size
    assert (small_info.width, small_info.height) == full.size  # the photo's size, not the thumbnail's
    assert max(small.size) == 320 and min(small.size) >= 224 and small.height > small.width
    assert correlation(small, full) > 0.98
    assert load_image(tmp_path / "IMG_1.HEIC", target_size=260).size == full.size  # 240 px is too small: full
    big.save(tmp_path / "IMG_2.HEIC", quality=80)  # no thumbnail: the photo itself
    assert load_image(tmp_path / "IMG_2.HEIC", target_size=224).size == big.size
    # a 256-px grid tile only needs the longer side: the 320 x 240 thumbnail fills it
    assert load_image(tmp_path / "IMG_1.HEIC", max_side=256).size == small.size
    assert load_image(tmp_path / "IMG_1.HEIC", max_side=400).size == full.size
    from ui.web.thumbs import ThumbnailCache

    with Image.open(ThumbnailCache(tmp_path / "thumbs").thumbnail(str(tmp_path / "IMG_1.HEIC"), "h1")) as tile:
        assert max(tile.size) == 256 and tile.height > tile.width


# -- indexing and search ----------------------------------------------------------------------------

def test_dng_and_raw_jpeg_pair_are_indexed_and_found(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("lake_with_boats.jpg", "grace_hopper_portrait.jpg", "brick_wall.png", "espresso_cup.png"):
        shutil.copy(SAMPLE / name, folder / name)
    (folder / "IMG_7.DNG").write_bytes(make_dng(CAT, orientation=1))
    Image.open(CAT).convert("RGB").save(folder / "IMG_7.JPG", quality=90)  # the camera's JPEG of the same shot
    encoder = FakeEncoder()
    report = index(encoder, tmp_path / "db", folder)
    assert report.added == 6 and report.skipped == []
    store = Store(tmp_path / "db")
    try:
        hits = Searcher(encoder, store).search_image(CAT, k=3)
        assert {Path(h.path).name for h in hits[:2]} == {"IMG_7.DNG", "IMG_7.JPG"}
    finally:
        store.close()


def test_xmp_sidecars_give_captions_and_their_changes_are_synced(tmp_path, fake_encoder):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "IMG_1.CR2").write_bytes(make_dng(CAT))  # a TIFF-based RAW: LibRaw reads it by content
    shutil.copy(SAMPLE / "lake_with_boats.jpg", folder / "IMG_2.jpg")
    xmp = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           '<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/">'
           '<dc:description><rdf:Alt><rdf:li xml:lang="x-default">{d}</rdf:li></rdf:Alt></dc:description>'
           '<dc:subject><rdf:Bag><rdf:li>{k1}</rdf:li><rdf:li>{k2}</rdf:li></rdf:Bag></dc:subject>'
           '</rdf:Description></rdf:RDF></x:xmpmeta>')
    (folder / "IMG_1.CR2.xmp").write_text(xmp.format(d="ginger cat on a sofa", k1="cat", k2="pets"))
    (folder / "IMG_2.xmp").write_text(xmp.format(d="boats on a lake", k1="lake", k2="summer"))
    scan = scan_folder(str(folder))
    assert [Path(f.path).name for f in scan.files] == ["IMG_1.CR2", "IMG_2.jpg"]  # .xmp is not a photo
    index(fake_encoder, tmp_path / "db", folder)

    def captions() -> dict[str, set[str]]:
        store = Store(tmp_path / "db")
        try:
            caps = store.folder_captions(1, ("sidecar",))
            return {Path(p).name: {t for t, _ in caps.get(s.id, set())} for p, s in store.file_states(1).items()}
        finally:
            store.close()

    assert captions() == {"IMG_1.CR2": {"ginger cat on a sofa", "cat, pets"},
                          "IMG_2.jpg": {"boats on a lake", "lake, summer"}}
    store = Store(tmp_path / "db")
    try:
        hit = Searcher(fake_encoder, store).search_text("ginger cat on a sofa", k=1)[0]
        assert Path(hit.path).name == "IMG_1.CR2"
    finally:
        store.close()
    # Editing only the sidecar (the photo untouched) updates the captions on the next sync.
    (folder / "IMG_1.CR2.xmp").write_text(xmp.format(d="a sleeping cat", k1="cat", k2="indoors"))
    (folder / "IMG_2.xmp").unlink()
    report = index(fake_encoder, tmp_path / "db", folder)
    assert report.unchanged == 2
    assert captions() == {"IMG_1.CR2": {"a sleeping cat", "cat, indoors"}, "IMG_2.jpg": set()}


# -- the browser only gets what it can show ---------------------------------------------------------

def test_browser_gets_jpeg_for_raw_and_heic(tmp_path):
    from ui.web.thumbs import ThumbnailCache

    (tmp_path / "IMG_1.dng").write_bytes(make_dng(CAT, orientation=6))
    sources = [tmp_path / "IMG_1.dng"]
    if images.HEIF_AVAILABLE:
        Image.open(CAT).convert("RGB").save(tmp_path / "IMG_2.HEIC")
        sources.append(tmp_path / "IMG_2.HEIC")
    shutil.copy(SAMPLE / "lake_with_boats.jpg", tmp_path / "IMG_3.jpg")
    cache = ThumbnailCache(tmp_path / "thumbs")
    for i, src in enumerate(sources):
        for served in (cache.thumbnail(str(src), f"h{i}"), cache.display(str(src), f"h{i}")):
            assert served is not None and served != str(src)
            with Image.open(served) as shown:
                assert shown.format == "JPEG"
                if src.suffix == ".dng":
                    assert shown.height > shown.width  # upright, as the camera was held
    assert cache.display(str(tmp_path / "IMG_3.jpg"), "h9") == str(tmp_path / "IMG_3.jpg")  # a JPEG as it is


def test_raw_jpeg_pair_is_one_tile_showing_the_jpeg(tmp_path):
    from retrieval.search import Hit
    from ui.web.render import PAIR_BADGE, gallery
    from ui.web.state import Result

    paths = ["/p/IMG_1.CR2", "/p/other.jpg", "/p/IMG_1.JPG", "/q/IMG_1.JPG", "/p/IMG_2.dng", "/p/IMG_2.png"]
    results = [Result(hit=Hit(path=p, score=1 - i / 10, image_id=i), row=None) for i, p in enumerate(paths)]

    class State:
        def thumbnail(self, r):
            return f"/thumbs/{r.hit.image_id}.jpg"

    items, shown = gallery(State(), results)
    # The pair takes the RAW's (better) place, shown as its JPEG; a JPEG in another folder and a PNG are no pair.
    assert shown == ["/p/IMG_1.JPG", "/p/other.jpg", "/q/IMG_1.JPG", "/p/IMG_2.dng", "/p/IMG_2.png"]
    assert [PAIR_BADGE in label for _, label in items] == [True, False, False, False, False]
