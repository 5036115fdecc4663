"""The Library page: what is indexed, what was skipped, the Reindex button, the folders of the library
(added and removed here) and what the watcher is doing.

Endpoints: ``/library_info()`` and ``/reindex()`` (both return the page's summary, status and tables);
``/add_folder(path)`` and ``/remove_folder(path)`` (each returns a one-line result, then the same four,
then the remove picker and the watcher's state).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import gradio as gr

from indexer.watch import WatchStatus
from retrieval.errors import ImgSearchError

from .render import library_md, md_esc, msg, status_md, when
from .state import AppState, allow_current_folders

WATCH_REFRESH_S = 3.0  # how often the page re-reads the watcher's state while watching


def watch_md(state: AppState) -> str:
    """The watcher's state: off, or which folders, by events or polling, the last batch and what is pending."""
    st: WatchStatus | None = state.watch_status()
    if st is None:
        return msg("info", "Not watching: changes are picked up by Reindex (start the server with "
                           "“imgsearch serve --watch” to apply them as they happen).")
    if st.mode == "stopped":
        head = msg("warn", "The watcher has stopped: changes are picked up by Reindex.")
    else:
        how = "file-system events" if st.mode == "events" else f"a rescan every {st.poll_seconds:g}s"
        head = msg("ok", f"Watching {len(st.folders)} folder(s) through {how}.")
    last = (f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(st.last_change_at))} — {md_esc(st.last_summary)}"
            if st.last_change_at else "none yet")
    lines = [head, "", f"**Last applied batch** {last}  ",
             f"**Batches applied** {st.batches} · **Pending** {st.pending} changed path(s)"]
    lines += [f"- watching {md_esc(f)}" for f in st.folders]
    if st.errors:
        lines += ["", f"**Watch errors** ({len(st.errors)}, latest last):"] + [f"- {md_esc(e)}" for e in st.errors[-5:]]
    return "\n".join(lines)


def build_library_page(demo: gr.Blocks, state: AppState) -> Callable[[], None]:
    """Lay out the Library tab (inside ``demo``'s Tabs) and return the function that wires its events
    (it refreshes on page load)."""
    with gr.Tab("Library", id="library"):
        with gr.Row(equal_height=True):
            with gr.Column(scale=4):
                lib_md = gr.Markdown(elem_id="lib-summary")
            with gr.Column(scale=0, min_width=180):
                reindex_btn = gr.Button("Reindex", variant="primary", elem_id="reindex-btn")
                refresh_btn = gr.Button("Refresh", variant="secondary", size="sm", elem_id="refresh-btn")
        lib_status = gr.Markdown(elem_id="lib-status")
        with gr.Row(equal_height=True, elem_id="folder-controls"):
            with gr.Column(scale=3):
                folder_box = gr.Textbox(label="Add a folder", placeholder="/home/me/Pictures/2024",
                                        max_lines=1, elem_id="folder-path",
                                        interactive=state.folders_editable)
            with gr.Column(scale=0, min_width=140):
                add_btn = gr.Button("Add folder", variant="primary", elem_id="add-folder-btn",
                                    interactive=state.folders_editable)
            with gr.Column(scale=3):
                remove_dd = gr.Dropdown(label="Remove a folder (its photos leave the index; the files stay)",
                                        choices=[], value=None, allow_custom_value=True, elem_id="remove-folder")
            with gr.Column(scale=0, min_width=140):
                remove_btn = gr.Button("Remove", variant="stop", elem_id="remove-folder-btn",
                                       interactive=state.folders_editable)
        folder_status = gr.Markdown(elem_id="folder-status")
        watch_status = gr.Markdown(elem_id="watch-status")
        folders_df = gr.Dataframe(headers=["Folder", "Photos", "Last indexed"],
                                  datatype=["str", "number", "str"], label="Indexed folders",
                                  interactive=False, wrap=True, elem_id="folders-table")
        skipped_df = gr.Dataframe(headers=["Skipped file", "Reason"], datatype=["str", "str"],
                                  label="Skipped files", interactive=False, wrap=True,
                                  elem_id="skipped-table")
        timer = gr.Timer(WATCH_REFRESH_S)  # watching may start after the page is built
        batches_seen = gr.State(-1)  # the watcher's batch count this page last showed

    def wire_events() -> None:
        def library_view():
            lib = state.library()
            folders = [[f["path"], f["images"], when(f.get("indexed_at"))] for f in lib["folders"]]
            skipped = [[p, reason] for p, reason in lib["skipped"]]
            # plain values, not gr.Dataframe(...) updates: API clients then get the table itself
            return library_md(lib, state.status), status_md(state.status), folders, skipped

        library_outputs = [lib_md, lib_status, folders_df, skipped_df]

        def library_info():
            allow_current_folders(demo, state)
            return library_view()

        def folder_controls():
            return gr.Dropdown(choices=state.folder_paths(), value=None), watch_md(state)

        controls = [remove_dd, watch_status]
        refresh_btn.click(library_info, None, library_outputs, api_name="library_info").then(
            folder_controls, None, controls, api_visibility="private")
        demo.load(library_info, None, library_outputs, api_visibility="private").then(
            folder_controls, None, controls, api_visibility="private")
        def tick(seen: int):
            """The watcher's state; the counts and tables too, but only when a batch was applied since."""
            st = state.watch_status()
            batches = st.batches if st is not None else -1
            if batches == seen:
                return watch_md(state), *(gr.skip() for _ in library_outputs), seen
            return watch_md(state), *library_view(), batches

        timer.tick(tick, batches_seen, [watch_status, *library_outputs, batches_seen], api_visibility="private",
                   show_progress="hidden")

        def reindex(progress=gr.Progress()):
            started = state.start_reindex()
            if not started:
                gr.Info("A reindex is already running; showing its progress.")
            progress((0, None), desc="Starting…")
            while not state.wait_reindex(timeout=0.5):
                s = state.status
                if s.total:
                    progress((s.done, s.total), desc=f"Indexing {os.path.basename(s.folder) or s.folder}",
                             unit="files")
                else:
                    progress((0, None), desc=f"Scanning {os.path.basename(s.folder) or s.folder}…")
            if state.status.errors:
                gr.Warning(f"Reindex finished with {len(state.status.errors)} error(s); see the Library tab.")
            return library_info()

        reindex_btn.click(reindex, None, library_outputs, api_name="reindex", concurrency_limit=1,
                          show_progress="full")

        def after(line: str):
            allow_current_folders(demo, state)  # added folders become servable, removed ones stop being
            return (line, *library_view(), *folder_controls())

        def add_folder(path: str, progress=gr.Progress()):
            progress((0, None), desc="Scanning…")

            def step(done: int, total: int) -> None:
                progress((done, total), desc="Indexing", unit="files")

            try:
                report = state.add_folder(path or "", progress=step)
            except ImgSearchError as e:
                return after(msg("error", str(e)))
            watched = " and watching it" if state.watching else ""
            return after(msg("ok", f"Added{watched}: {report.summary()}"))

        def remove_folder(path: str | None):
            try:
                removed = state.remove_folder(path or "")
            except ImgSearchError as e:
                return after(msg("error", str(e)))
            return after(msg("ok", f"Removed {os.path.abspath(path or '')}: {removed} photo(s) left the "
                                   "index; the files themselves are untouched."))

        folder_outputs = [folder_status, *library_outputs, *controls]
        one = {"concurrency_limit": 1, "concurrency_id": "library-folders"}  # adds and removes: one at a time
        add_btn.click(add_folder, folder_box, folder_outputs, api_name="add_folder", show_progress="full", **one)
        folder_box.submit(add_folder, folder_box, folder_outputs, api_visibility="private", show_progress="full", **one)
        remove_btn.click(remove_folder, remove_dd, folder_outputs, api_name="remove_folder", **one)

    return wire_events
