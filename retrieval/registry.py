"""A registry of model specs: each kind of model (encoders, rerankers) lists what can be built from a spec string.

A spec is a registered name (``default``) or a registered prefix and its argument (``hf:<hub id>``).
Listing is cheap: this module imports no model code, and each spec's factory imports its own lazily.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .errors import EncoderSpecError


@dataclass(frozen=True)
class ModelSpec:
    """One buildable spec: a name (or a prefix taking an argument after ``name:``) and how to build it.

    ``dim``: the embedding width where the spec fixes it (None where it depends on the checkpoint or
    folder, or for models that do not embed). ``installed()``: whether the packages and files it
    needs are present, without loading anything. ``factory(arg, **options)`` builds it; ``arg`` is
    the name itself, or the text after ``name:`` as given (the factory strips it).
    """

    name: str
    description: str
    factory: Callable[..., Any]
    installed: Callable[[], bool]
    dim: int | None = None
    prefix: bool = False
    placeholder: str = ""  # what follows ``name:`` in help text, e.g. "<folder>"

    @property
    def usage(self) -> str:
        """How the spec is written: ``default``, or ``heads:<folder>`` for a prefix."""
        return f"{self.name}:{self.placeholder}" if self.prefix else self.name


class Registry:
    """The specs of one kind of model, in the order they are listed; ``kind`` names it in errors."""

    def __init__(self, kind: str, default: str, specs: Iterable[ModelSpec] = ()) -> None:
        self.kind = kind
        self.default = default
        self._specs: dict[str, ModelSpec] = {}
        for spec in specs:
            self.add(spec)

    def add(self, spec: ModelSpec) -> ModelSpec:
        """Register one spec; its name must be new."""
        if spec.name in self._specs:
            raise ValueError(f"{self.kind} spec {spec.name!r} is registered twice")
        self._specs[spec.name] = spec
        return spec

    def specs(self) -> list[ModelSpec]:
        """Every registered spec, in registration order."""
        return list(self._specs.values())

    def names(self, quoted: bool = True) -> str:
        """The registered specs for help text and errors: "'a', 'b:<x>' or 'c:<y>'"."""
        items = [f"'{s.usage}'" if quoted else s.usage for s in self._specs.values()]
        return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]

    def resolve(self, spec: str | None) -> tuple[ModelSpec, str]:
        """The registered spec a spec string names, and its argument; an EncoderSpecError when none does."""
        text = (spec or self.default).strip()
        entry = self._specs.get(text)
        if entry is not None and not entry.prefix:
            return entry, text
        head, sep, arg = text.partition(":")
        entry = self._specs.get(head)
        if sep and entry is not None and entry.prefix:
            return entry, arg
        raise EncoderSpecError(f"unknown {self.kind} spec '{text}' (expected {self.names()})")

    def create(self, spec: str | None, **options: Any) -> Any:
        """Build what a spec string names, passing ``options`` (device, ...) to its factory."""
        entry, arg = self.resolve(spec)
        return entry.factory(arg, **options)


def packages_installed(*modules: str) -> Callable[[], bool]:
    """An ``installed`` check: every top-level module named is importable (found, not imported)."""
    def check() -> bool:
        return all(importlib.util.find_spec(m) is not None for m in modules)

    return check
