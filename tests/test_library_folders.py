"""The library's folders from the web side (ui/web/state.py): add, remove, watch, and what is served.

``AppState`` over an index built with the fake encoder: adding a folder indexes it (and watches it when
watching), removing one drops its photos from the index and from what the server may serve, the folder
list survives a restart, and a photo written into a watched folder while serving is found by a search.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from conftest import FakeEncoder, make_photo, wait_for
from indexer.sync import FolderError, Indexer
from retrieval.search import Searcher
from retrieval.store import Store
from ui.web import AppState


@pytest.fixture
def lib(tmp_path: Path):
    """An index of ``photos/`` (3 photos) with an AppState over it, and a second folder ``more/`` (2 photos,
    one a name nothing else has) not yet in the library."""
    photos, more, data = tmp_path / "photos", tmp_path / "more", tmp_path / "data"
    for i in range(3):
        make_photo(photos / f"p{i}.png", seed=i)
    make_photo(more / "walrus_beach.png", seed=10)
    make_photo(more / "sub" / "q1.jpg", seed=11)
    (more / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    store = Store(data)
    encoder = FakeEncoder()
    Indexer(encoder, store, show_progress=False).sync(str(photos))
    state = AppState(data, searcher=Searcher(encoder, store))
    yield state, photos, more
    state.close()


def names_found(state: AppState, query: str, k: int = 10) -> list[str]:
    return [os.path.basename(r.hit.path) for r in state.search(query, k=k)]


def test_add_folder_indexes_it_serves_it_and_a_restart_keeps_it(lib):
    state, photos, more = lib
    report = state.add_folder(f"  {more}/  ")  # typed with spaces and a trailing slash
    assert (report.root, report.added) == (str(more), 2)
    assert [p for p, _ in report.skipped] == [str(more / "broken.jpg")]
    assert state.folder_paths() == sorted([str(photos), str(more)])
    assert names_found(state, "walrus")[0] == "walrus_beach.png"  # the searcher sees the new generation
    assert state.photo(str(more / "sub" / "q1.jpg")) is not None
    assert str(more) in state.allowed_paths()
    lib_facts = state.library()
    assert lib_facts["images"] == 5 and str(more / "broken.jpg") in dict(lib_facts["skipped"])

    restarted = AppState(state.data_dir)  # another server process over the same index
    try:
        assert restarted.folder_paths() == sorted([str(photos), str(more)])
        assert restarted.library()["images"] == 5
    finally:
        restarted.close()


def test_remove_folder_drops_its_photos_skips_and_serving(lib):
    state, photos, more = lib
    state.add_folder(str(more))
    assert state.remove_folder(str(more)) == 2
    assert state.folder_paths() == [str(photos)]
    assert "walrus_beach.png" not in names_found(state, "walrus")
    assert state.photo(str(more / "walrus_beach.png")) is None
    assert str(more) not in state.allowed_paths()
    lib_facts = state.library()
    assert lib_facts["images"] == 3 and lib_facts["skipped"] == []
    assert sorted(f.name for f in more.rglob("*.*")) == ["broken.jpg", "q1.jpg", "walrus_beach.png"]  # files stay
    with pytest.raises(FolderError, match="not a folder of the library"):
        state.remove_folder(str(more))

    check = Store(state.data_dir, create=False)  # SQLite and FAISS agree after the removal
    try:
        report = check.check()
        assert report.ok and report.images == 3, report.as_dict()
        assert check.index("images").ntotal == 3
    finally:
        check.close()
    restarted = AppState(state.data_dir)
    try:
        assert restarted.folder_paths() == [str(photos)]
    finally:
        restarted.close()
    state.add_folder(str(more))  # and it can come back
    assert names_found(state, "walrus")[0] == "walrus_beach.png"


@pytest.mark.parametrize("typed,reason", [
    ("", "type the path of a photo folder"),
    ("{tmp}/nowhere", "folder not found: {tmp}/nowhere"),
    ("{tmp}/photos/p0.png", "not a folder: {tmp}/photos/p0.png"),
    ("{tmp}/pho\ntos", "cannot contain control characters"),
    ("{tmp}/pho\0tos", "cannot contain control characters"),
    ("{tmp}/data", "inside the index folder"),
    ("{tmp}/photos", "already in the library"),
    ("{tmp}/photos/inner", "already indexed as part of {tmp}/photos"),
    ("{tmp}", "holds the indexed folder {tmp}/photos"),
])
def test_bad_folder_paths_are_one_line_errors_and_change_nothing(lib, tmp_path, typed, reason):
    state, photos, _ = lib
    (photos / "inner").mkdir()
    with pytest.raises(FolderError) as e:
        state.add_folder(typed.format(tmp=tmp_path))
    message = str(e.value)
    assert reason.format(tmp=tmp_path) in message and "\n" not in message
    assert state.folder_paths() == [str(photos)] and state.allowed_paths()[0] == str(photos)
    assert state.library()["images"] == 3


@pytest.mark.parametrize("typed", ["/", "/proc", "/proc/self", "/sys/class", "/dev"])
def test_system_folders_are_refused(lib, typed):
    state, photos, _ = lib
    with pytest.raises(FolderError, match="is a system folder, not a photo folder"):
        state.add_folder(typed)
    assert state.folder_paths() == [str(photos)] and "/proc" not in state.allowed_paths()


def test_network_server_without_login_cannot_change_folders(lib):
    """serve --host 0.0.0.0 without --auth: nobody on the network may make a folder servable, or remove one."""
    state, photos, more = lib
    state.folders_editable = False
    for change in (lambda: state.add_folder(str(more)), lambda: state.remove_folder(str(photos))):
        with pytest.raises(FolderError, match="only on a server with a login"):
            change()
    assert state.folder_paths() == [str(photos)] and state.library()["images"] == 3


def test_unreadable_folder_is_refused(lib, monkeypatch):
    state, _, more = lib
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(more) else real_access(p, mode))
    with pytest.raises(FolderError, match=f"^folder not readable: {more}$"):
        state.add_folder(str(more))  # (tests run as root here, so a chmod would not stop the read)
    assert str(more) not in state.folder_paths()


def test_watch_applies_changes_while_serving_and_follows_added_and_removed_folders(lib):
    state, photos, more = lib
    status = state.start_watching(debounce=0.2, tick=0.05)
    assert state.watching and status.mode == "events" and status.folders == [str(photos)]
    wait_for(lambda: state.watch_status().batches >= 1)  # the catch-up sync at start
    make_photo(photos / "zebra_crossing.png", seed=20)  # written while serving
    assert wait_for(lambda: names_found(state, "zebra")[:1] == ["zebra_crossing.png"])
    st = wait_for(lambda: (w := state.watch_status()) and "1 added" in w.last_summary and w)  # set after the commit
    assert st.last_change_at and st.pending == 0 and not st.errors

    state.add_folder(str(more))  # added while watching: watched too
    assert sorted(state.watch_status().folders) == sorted([str(photos), str(more)])
    make_photo(more / "narwhal_tusk.png", seed=21)
    assert wait_for(lambda: names_found(state, "narwhal")[:1] == ["narwhal_tusk.png"])
    (photos / "zebra_crossing.png").unlink()
    assert wait_for(lambda: "zebra_crossing.png" not in names_found(state, "zebra"))

    assert state.remove_folder(str(more)) == 3
    assert state.watch_status().folders == [str(photos)]
    make_photo(more / "okapi_forest.png", seed=22)  # no longer watched: never indexed again
    time.sleep(0.6)
    assert state.folder_paths() == [str(photos)] and "okapi_forest.png" not in names_found(state, "okapi")
    state.stop_watching()
    assert not state.watching and state.watch_status().mode == "stopped"


def test_watch_falls_back_to_polling_when_events_are_unavailable(lib):
    state, photos, _ = lib

    def no_events():
        raise OSError("inotify watch limit reached")

    status = state.start_watching(debounce=0.1, observer_factory=no_events, tick=0.05)
    assert status.mode == "polling" and "file-system events unavailable" in status.errors[0]
    state.stop_watching()
    assert state.watch_status().mode == "stopped"


def test_library_page_endpoints_add_and_remove_and_only_added_folders_are_served(lib):
    """/add_folder and /remove_folder as the page calls them; the file route follows the folder list."""
    pytest.importorskip("gradio")
    import httpx
    from gradio_client import Client

    from ui.web import build_app, launch

    state, photos, more = lib
    demo = build_app(state)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch(demo, state, port=port)
    url = f"http://127.0.0.1:{port}/"
    photo = url + "gradio_api/file=" + str(more / "walrus_beach.png")
    try:
        client = Client(url, verbose=False)
        assert httpx.get(photo).status_code == 403  # not added yet
        line, *_ = client.predict(str(more / "nowhere"), api_name="/add_folder")
        assert f"folder not found: {more / 'nowhere'}" in line and "msg-error" in line
        assert httpx.get(photo).status_code == 403
        line, summary, _, folders, skipped, _, watch = client.predict(str(more), api_name="/add_folder")
        assert "msg-ok" in line and "2 added" in line and "**5** photos" in summary
        assert [r[:2] for r in folders["data"]] == [[str(more), 2], [str(photos), 3]]
        assert [r[0] for r in skipped["data"]] == [str(more / "broken.jpg")] and "Not watching" in watch
        assert httpx.get(photo).status_code == 200  # added: servable
        line, summary, _, folders, skipped, _, _ = client.predict(str(more), api_name="/remove_folder")
        assert f"Removed {more}: 2 photo(s)" in line and "**3** photos" in summary
        assert [r[0] for r in folders["data"]] == [str(photos)] and skipped["data"] in ([], [["", ""]])
        assert httpx.get(photo).status_code == 403  # removed: no longer served
        line, *_ = client.predict(str(more), api_name="/remove_folder")
        assert "not a folder of the library" in line
    finally:
        demo.close()


def test_serve_watch_applies_changes_until_shutdown(lib, monkeypatch, capsys):
    """`imgsearch serve --watch --poll S`: the watcher runs beside the server and stops with it."""
    import ui.web
    import ui.web.state
    from ui.cli.app import main

    _, photos, _ = lib
    seen: dict = {}

    class Demo:  # stands in for the gradio app: "serving" is writing a photo and searching for it
        def block_thread(self) -> None:
            state = seen["state"]
            make_photo(photos / "yak_herd.png", seed=30)
            wait_for(lambda: state.store().image_by_path(str(photos / "yak_herd.png")))
            seen["status"] = wait_for(lambda: (w := state.watch_status()) and "1 added" in w.last_summary and w)

    def build_app(state):
        seen["state"] = state
        return Demo()

    monkeypatch.setattr(ui.web, "build_app", build_app)
    monkeypatch.setattr(ui.web, "launch", lambda *a, **kw: None)
    monkeypatch.setattr(ui.web.state, "create_encoder", lambda spec, device=None, **kw: FakeEncoder())
    db = str(seen.setdefault("db", lib[0].data_dir))
    assert main(["serve", "--db", db, "--rerank-model", "none", "--watch", "--poll", "0.2", "--debounce", "0.1"]) == 0
    status = seen["status"]
    assert status.mode == "polling" and status.folders == [str(photos)] and "1 added" in status.last_summary
    assert not seen["state"].watching  # stopped on shutdown
    assert "watching 1 folder(s) (rescanning every 0.2s)" in capsys.readouterr().err

    assert main(["serve", "--db", db, "--poll", "5"]) == 2
    assert "--poll needs --watch" in capsys.readouterr().err


@pytest.mark.parametrize("extra,editable", [([], True), (["--host", "0.0.0.0"], False),
                                            (["--host", "0.0.0.0", "--auth", "alice:secret"], True)])
def test_serve_lets_the_page_change_folders_only_locally_or_behind_a_login(lib, monkeypatch, capsys, extra, editable):
    import ui.web
    from ui.cli.app import main

    seen: dict = {}

    class Demo:
        def block_thread(self) -> None:
            pass

    monkeypatch.setattr(ui.web, "build_app", lambda state: seen.setdefault("state", state) and Demo())
    monkeypatch.setattr(ui.web, "launch", lambda *a, **kw: None)
    assert main(["serve", "--db", str(lib[0].data_dir), "--rerank-model", "none", *extra]) == 0
    assert seen["state"].folders_editable is editable
    assert ("cannot be added or removed" in capsys.readouterr().err) is not editable
