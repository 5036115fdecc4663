"""Open a photo library in one place: its store, the encoder that built it, a searcher, and a reranker.

The CLI, the web app and the benchmarks all open an index through :func:`open_library`, so that what
a search is wired from (and how) is decided once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .encoders import DEFAULT_SPEC, Encoder, create_encoder
from .errors import EmptyIndexError
from .rerank import DEFAULT_RERANK_K, Reranker, create_reranker
from .search import Searcher
from .store import Store


@dataclass
class Library:
    """An open index and what searches it; ``close`` (or ``with``) releases the store."""

    store: Store
    encoder: Encoder
    searcher: Searcher
    reranker: Reranker | None = None

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "Library":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_library(data_dir: str | os.PathLike, *, model: str | None = None, device: str | None = None,
                 reranker: str | None = None, rerank_k: int = DEFAULT_RERANK_K, hubness: bool = True,
                 create: bool = False, encoder: Encoder | None = None) -> Library:
    """The index in ``data_dir`` with the encoder it was built with (or ``model``, which must match).

    ``create``: make the data folder when it is new, and use ``model`` (else the stored spec, else the
    default) for an empty index; without it an empty index is an :class:`EmptyIndexError`.
    ``encoder``: an encoder already loaded (it must match the index). ``reranker``: a reranker spec,
    loaded on the encoder's towers where they fit. ``rerank_k`` and ``hubness`` are the search options.
    """
    store = Store(data_dir, create=create)
    try:
        info = store.encoder_info
        if info is None and not create:
            raise EmptyIndexError(f"the index in {store.data_dir} is empty (run `imgsearch index DIR` first)")
        if encoder is None:
            encoder = create_encoder(model or (info.spec if info else DEFAULT_SPEC), device=device, light=True)
        rr = create_reranker(reranker, encoder=encoder, device=device) if reranker else None
        searcher = Searcher(encoder, store, rr, rerank_k, hubness=hubness)
    except BaseException:
        store.close()
        raise
    return Library(store, encoder, searcher, rr)
