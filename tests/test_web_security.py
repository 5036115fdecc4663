"""The web server under attack: path traversal, symlinks out of the photo folder, auth, hostile uploads.

The app runs in-process over a small index built with the fake encoder (no model to load), so these
tests are quick; the gradio 6 file route is ``/gradio_api/file=<path>`` (gradio/routes.py), with the
deprecated ``/gradio_api/file/<path>`` beside it.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import http.client
import re
import socket
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from PIL import Image

gr = pytest.importorskip("gradio")
pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

from conftest import REPO, FakeEncoder, make_photo  # noqa: E402
from indexer.sync import Indexer  # noqa: E402
from retrieval.search import Searcher  # noqa: E402
from retrieval.store import Store  # noqa: E402
from ui.web import AppState, build_app, launch  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, root: Path, auth=None) -> None:
        self.root = root
        self.photos, self.data, self.outside = root / "photos", root / "data", root / "outside"
        self.store = Store(self.data)
        Indexer(FakeEncoder(), self.store, show_progress=False).sync(str(self.photos))
        self.state = AppState(self.data, searcher=Searcher(FakeEncoder(), self.store))
        self.demo = build_app(self.state)
        self.port = free_port()
        launch(self.demo, self.state, port=self.port, auth=auth)
        self.url = f"http://127.0.0.1:{self.port}"

    def raw_get(self, target: str) -> int:
        """GET with the request target sent exactly as given (httpx would normalise ../)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", target)
            return conn.getresponse().status
        finally:
            conn.close()

    def close(self) -> None:
        self.demo.close()
        self.state.close()


def _library(root: Path) -> None:
    photos, outside = root / "photos", root / "outside"
    for i in range(4):
        make_photo(photos / f"p{i}.png", seed=i)
    (photos / "p0.txt").write_text("a caption for p0\n")
    make_photo(outside / "secret.png", seed=99)
    (outside / "secret.txt").write_text("not for the web\n")
    os.symlink(outside / "secret.png", photos / "link_out.png")  # an image file outside the folder
    os.symlink(outside, photos / "linked_dir")  # a folder outside the folder
    os.symlink("/etc/hostname", photos / "hostname_link")
    os.symlink("/etc/passwd", photos / "passwd.png")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("sec")
    _library(root)
    s = Server(root)
    yield s
    s.close()


def file_url(path: str) -> str:
    return "/gradio_api/file=" + path


def test_indexed_photos_and_thumbnails_are_served(server):
    assert server.raw_get(file_url(str(server.photos / "p1.png"))) == 200
    client = Client(server.url + "/", verbose=False)
    gallery, _, hits = client.predict("anything", 5, 0.0, False, api_name="/search")
    assert hits and gallery
    thumb = next(server.state.thumbs.folder.glob("*.jpg"))
    assert server.raw_get(file_url(str(thumb))) == 200


def test_thumbnail_folder_serves_no_links_out(server):
    """Thumbnails are gradio static files; a link planted in their folder is still resolved and refused."""
    folder = server.state.thumbs.folder
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "planted.jpg"
    os.symlink("/etc/passwd", link)
    try:
        assert server.raw_get(file_url(str(link))) == 403
    finally:
        link.unlink()


@pytest.mark.parametrize("target", [
    "/gradio_api/file=../../../../../../etc/passwd",
    "/gradio_api/file=%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/gradio_api/file=..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/gradio_api/file=%252e%252e%252fetc%252fpasswd",
    "/gradio_api/file=/etc/passwd",
    "/gradio_api/file=%2Fetc%2Fpasswd",
    "/gradio_api/file=//etc/passwd",
    "/gradio_api/file/etc/passwd",
    "/gradio_api/file=file:///etc/passwd",
    "/file=/etc/passwd",
    "/gradio_api/file=/proc/self/environ",
])
def test_path_traversal_is_refused(server, target):
    assert server.raw_get(target) in (403, 404), target


def test_index_files_and_escapes_from_allowed_folders_are_refused(server):
    photos, data = server.photos, server.data
    for path in [
        data / "imgsearch.sqlite", data / "images.faiss", data / "indexer.lock",
        f"{photos}/../data/imgsearch.sqlite",
        f"{server.state.thumbs.folder}/../imgsearch.sqlite",
        f"{photos}/../outside/secret.png",
        photos / "p0.txt",  # sidecars are not photos... but they sit in an allowed folder
    ]:
        status = server.raw_get(file_url(quote(str(path))))
        if str(path).endswith("p0.txt"):
            assert status == 200  # documented: anything inside an indexed folder is servable
            continue
        assert status in (403, 404), path


def test_symlinks_out_of_the_photo_folder_are_not_served(server):
    """Links inside an indexed folder may be indexed, but the server resolves them and refuses."""
    for link in ("link_out.png", "linked_dir/secret.png", "linked_dir/secret.txt", "hostname_link", "passwd.png"):
        assert server.raw_get(file_url(quote(str(server.photos / link)))) == 403, link
    skipped = server.store.skipped()
    assert skipped[str(server.photos / "passwd.png")]["reason"].startswith("not an image file")


def test_auth_refuses_before_login_and_serves_after(tmp_path):
    _library(tmp_path)
    s = Server(tmp_path, auth=("alice", "s3cret"))
    try:
        photo = file_url(str(s.photos / "p1.png"))
        thumb = file_url(s.state.thumbnail(s.state.search("anything", k=1)[0]))  # a static file
        for target in ("/config", "/gradio_api/info", photo, thumb):
            assert s.raw_get(target) == 401, target
        r = httpx.post(s.url + "/gradio_api/call/search", json={"data": ["x", 5, 0, False]})
        assert r.status_code == 401
        with open(s.photos / "p1.png", "rb") as f:
            r = httpx.post(s.url + "/gradio_api/upload", files={"files": ("p.png", f, "image/png")})
        assert r.status_code == 401
        with pytest.raises(Exception):
            Client(s.url + "/", verbose=False)
        with httpx.Client(base_url=s.url) as c:
            assert c.post("/login", data={"username": "alice", "password": "wrong"}).status_code == 400
            assert c.get(photo).status_code == 401
            assert c.post("/login", data={"username": "alice", "password": "s3cret"}).status_code == 200
            assert c.get("/config").status_code == 200
            assert c.get(photo).status_code == 200
            assert c.get(thumb).status_code == 200
            assert c.get(file_url("/etc/passwd")).status_code == 403  # signed in is not a licence to roam
        client = Client(s.url + "/", auth=("alice", "s3cret"), verbose=False)
        _, _, hits = client.predict("anything", 3, 0.0, False, api_name="/search")
        assert len(hits) == 3
    finally:
        s.close()


def test_serve_binds_localhost_by_default():
    from ui.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1"
    import inspect

    assert inspect.signature(launch).parameters["host"].default == "127.0.0.1"


def test_server_is_not_reachable_on_other_interfaces(server):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            ip = s.getsockname()[0]
        except OSError:
            ip = "127.0.0.1"
    if ip.startswith("127."):
        pytest.skip("this machine has no non-loopback address to try")
    with pytest.raises(OSError):
        socket.create_connection((ip, server.port), timeout=2).close()


# -- uploads -----------------------------------------------------------------------------------------

def _find(server, path: Path):
    client = Client(server.url + "/", verbose=False)
    return client.predict(handle_file(str(path)), 4, api_name="/find_by_photo")


def test_upload_png_named_jpg_works(server, tmp_path):
    src = make_photo(tmp_path / "x.png", seed=2)
    disguised = tmp_path / "really_a_png.jpg"
    disguised.write_bytes(src.read_bytes())
    status, table, gallery = _find(server, disguised)
    assert "best captions" in status and len(gallery) == 4
    assert gallery[0]["caption"].split(" · ")[1].startswith("p2.png")  # the same picture comes first


@pytest.mark.parametrize("name,content", [
    ("notes.jpg", b"a text file with a .jpg name\n"),
    ("empty.jpg", b""),
    ("random.png", bytes(range(256)) * 8),
    ("script.jpg", b"<script>alert(1)</script>"),
])
def test_upload_non_images_get_a_clear_message(server, tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    status, table, gallery = _find(server, path)
    assert "That file is not an image we can read" in status, status
    assert "<script>" not in status and gallery == [] and not table["data"]


def test_upload_bomb_gets_a_clear_message(server, tmp_path):
    from test_bad_input import png_bomb

    status, _, gallery = _find(server, png_bomb(tmp_path / "bomb.png"))
    assert "not an image we can read (image too large" in status and gallery == []


def test_oversized_upload_is_refused_and_server_keeps_working(server, tmp_path):
    big = tmp_path / "big.png"
    img = Image.effect_noise((3000, 3000), 64).convert("RGB")  # incompressible: ~27 MB as PNG
    img.save(big, compress_level=0)
    assert big.stat().st_size > 25 * 1024 * 1024
    with open(big, "rb") as f:
        r = httpx.post(server.url + "/gradio_api/upload", files={"files": ("big.png", f, "image/png")}, timeout=60)
    assert r.status_code == 413
    with pytest.raises(Exception, match=re.compile("exceed|size|large|413", re.I)):
        _find(server, big)
    status, _, _ = _find(server, make_photo(tmp_path / "ok.png", seed=1))
    assert "best captions" in status


# -- no pickle anywhere --------------------------------------------------------------------------------

def test_code_never_unpickles():
    """Model weights and indexes load without pickle: no torch.load without weights_only=True, no
    pickle, no np.load(allow_pickle=True) in the library, the indexer or the UI."""
    bad = []
    for folder in ("retrieval", "indexer", "ui"):
        for path in sorted((REPO / folder).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            for m in re.finditer(r"torch\.load\(", text):
                call = text[m.start():text.find(")", m.end()) + 200]
                call = call[:_call_end(call)]
                if not re.search(r"weights_only\s*=\s*True", call):
                    bad.append(f"{path.relative_to(REPO)}: torch.load without weights_only=True")
            if re.search(r"^\s*(import|from)\s+(c?pickle|dill|joblib|shelve)\b", text, re.M) or "pickle.load" in text:
                bad.append(f"{path.relative_to(REPO)}: uses pickle")
            if re.search(r"allow_pickle\s*=\s*True", text):
                bad.append(f"{path.relative_to(REPO)}: np.load(allow_pickle=True)")
    assert not bad, bad


def _call_end(text: str) -> int:
    """Index just past the parenthesis closing the call that ``text`` starts with."""
    depth = 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)
