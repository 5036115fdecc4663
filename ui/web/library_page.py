"""The Library page: what is indexed, what was skipped, and the Reindex button.

Endpoints: ``/library_info()`` and ``/reindex()`` (both return the page's summary, status and tables).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import gradio as gr

from .render import library_md, status_md, when
from .state import AppState, allow_current_folders


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
        folders_df = gr.Dataframe(headers=["Folder", "Photos", "Last indexed"],
                                  datatype=["str", "number", "str"], label="Indexed folders",
                                  interactive=False, wrap=True, elem_id="folders-table")
        skipped_df = gr.Dataframe(headers=["Skipped file", "Reason"], datatype=["str", "str"],
                                  label="Skipped files", interactive=False, wrap=True,
                                  elem_id="skipped-table")

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

        refresh_btn.click(library_info, None, library_outputs, api_name="library_info")
        demo.load(library_info, None, library_outputs, api_visibility="private")

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

    return wire_events
