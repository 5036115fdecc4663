"""Training and evaluation: datasets, recall metrics, feature caches, heads, the fusion reranker, hubness fitting.

Kept apart from the query path: this package imports the library (encoders, rerank, images), and
nothing outside it (library, indexer, search) imports it. Import the submodules directly; this
``__init__`` stays empty so that ``retrieval.training.options`` can be read without torch.
"""
