"""`imgsearch models`: every encoder and reranker spec, what it is, its dimension and whether it is installed."""

from __future__ import annotations

import argparse

from retrieval.encoders.registry import DEFAULT_SPEC, list_models
from retrieval.registry import ModelSpec
from retrieval.rerank.registry import DEFAULT_RERANKER_SPEC, list_rerankers
from ui.cli.output import emit_json, out


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``models`` command to the imgsearch parser."""
    p = sub.add_parser("models", help="list the encoder (--model) and reranker (--rerank-model) specs")
    p.add_argument("--json", action="store_true", help="print JSON on stdout (logs go to stderr)")
    p.set_defaults(func=cmd_models)


def describe(spec: ModelSpec, default: str) -> dict:
    """One registry entry as the JSON `imgsearch models --json` prints."""
    return {"spec": spec.usage, "description": spec.description, "dim": spec.dim,
            "installed": bool(spec.installed()), "default": spec.name == default}


def cmd_models(args: argparse.Namespace) -> int:
    """Print the registries: a table per kind of model, or one JSON object."""
    kinds = {"encoders": [describe(s, DEFAULT_SPEC) for s in list_models()],
             "rerankers": [describe(s, DEFAULT_RERANKER_SPEC) for s in list_rerankers()]}
    if args.json:
        emit_json(kinds)
        return 0
    for title, option in (("encoders", "--model"), ("rerankers", "--rerank-model")):
        rows = kinds[title]
        width = max(len(r["spec"]) for r in rows)
        out(f"{title} ({option}):")
        for r in rows:
            dim = str(r["dim"]) if r["dim"] else "-"
            mark = "installed" if r["installed"] else "missing"
            default = " (default)" if r["default"] else ""
            out(f"  {r['spec']:<{width}}  {dim:>4}  {mark:<9}  {r['description']}{default}")
        out()
    out("dim: the embedding width (- where the checkpoint or folder decides); installed: its packages and files are here")
    return 0
