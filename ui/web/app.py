"""The Gradio Blocks app: the pages in tabs, the look (CSS, theme), and how it is served.

``launch`` serves the app with the file-serving rules locked down to the indexed folders and the
thumbnail cache.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from .duplicates_page import build_duplicates_page
from .library_page import build_library_page
from .photo_page import build_photo_page
from .search_page import build_search_page
from .state import AppState

MAX_UPLOAD = "25mb"

CSS = """
.gradio-container { width: 100% !important; max-width: 1280px !important; margin: 0 auto !important; }
#app-title h1 { margin-bottom: 0; letter-spacing: -0.02em; }
#app-title p { margin-top: 2px; opacity: .7; }
.msg { padding: 8px 12px; border-radius: 8px; border-left: 4px solid; font-size: 14px; }
.msg-ok { border-color: #22c55e; background: rgba(34,197,94,.08); }
.msg-info { border-color: #6366f1; background: rgba(99,102,241,.08); }
.msg-warn { border-color: #f59e0b; background: rgba(245,158,11,.10); }
.msg-error { border-color: #ef4444; background: rgba(239,68,68,.08); }
#results .thumbnail-item, #similar .thumbnail-item { border-radius: 10px; overflow: hidden; }
/* gradio narrows the grid to the item count: keep six columns, so one or two results stay thumbnails */
#results .grid-container, #similar .grid-container { --grid-cols: 6 !important; }
#filters { align-items: flex-end; }
#results .caption-label, #similar .caption-label {
  left: 0 !important; right: 0 !important; bottom: 0 !important; max-width: none !important;
  border-radius: 0 !important; margin: 0 !important; padding: 18px 8px 0 8px !important;
  border: none !important; border-bottom: 5px solid transparent !important;
  background: linear-gradient(transparent, rgba(0,0,0,.75)) !important; color: #fff !important;
  font-size: 12px !important; line-height: 1.3 !important; white-space: normal !important;
  display: -webkit-box !important; -webkit-line-clamp: 2; -webkit-box-orient: vertical; overflow: hidden !important;
  text-overflow: ellipsis; }
#captions-table td *, #folders-table td *, #skipped-table td * { font-family: var(--font) !important; }
#detail { border: 1px solid var(--border-color-primary); border-radius: 12px; padding: 12px; }
#detail-md code { word-break: break-all; }
footer { display: none !important; }
"""


def theme() -> gr.themes.Base:
    """A quiet theme with system fonts only (the default pulls web fonts, and we are offline)."""
    fonts = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"]
    mono = ["ui-monospace", "SFMono-Regular", "Menlo", "monospace"]
    return gr.themes.Soft(primary_hue="indigo", neutral_hue="slate", radius_size="md", font=fonts, font_mono=mono)


def build_app(state: AppState) -> gr.Blocks:
    """The Blocks app: Search, Find by photo, Library and Duplicates tabs over ``state``."""
    with gr.Blocks(title="imgsearch", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# imgsearch\nSearch your photos by what is in them — offline, on this computer.", elem_id="app-title")

        with gr.Tabs():
            pages = [build_search_page(demo, state), build_photo_page(demo, state), build_library_page(demo, state),
                     build_duplicates_page(demo, state)]
        # Events only once every tab is laid out: gr.api adds its (hidden) components where it is
        # called, and they belong to the Blocks, not to the Tabs.
        for wire_events in pages:
            wire_events()

    demo.imgsearch_state = state  # type: ignore[attr-defined]
    return demo


def launch(demo: gr.Blocks, state: AppState, *, host: str = "127.0.0.1", port: int | None = 7860,
           auth: tuple[str, str] | None = None, max_file_size: str | int = MAX_UPLOAD,
           prevent_thread_lock: bool = True, quiet: bool = True) -> tuple[Any, str, str]:
    """Serve the app: only the indexed folders and thumbnails are servable, uploads are capped, never shared."""
    demo.queue(default_concurrency_limit=2)
    # Thumbnails are served as static files: gradio then skips copying (and hashing) each one
    # into its upload cache on every search. The folder holds only thumbnails and previews.
    gr.set_static_paths([str(state.thumbs.folder)])
    return demo.launch(
        server_name=host,
        server_port=port,
        auth=auth,
        auth_message="imgsearch — sign in to search these photos." if auth else None,
        share=False,
        allowed_paths=state.allowed_paths(),
        blocked_paths=state.blocked_paths(),
        max_file_size=max_file_size,
        prevent_thread_lock=prevent_thread_lock,
        quiet=quiet,
        show_error=False,
        ssr_mode=False,
        inbrowser=False,
        theme=theme(),
        css=CSS,
        footer_links=[],
    )
