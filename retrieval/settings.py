"""Every ``IMGSEARCH_*`` environment variable, read once into one frozen :class:`Settings`.

Components take the value they need as an argument, defaulting it from ``Settings.from_env()`` when
they are built (never at import), so an app can load the settings once and pass them down, and tests
can pass values in. This is the only module that reads ``IMGSEARCH_*`` variables.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .errors import SettingsError

HOME_ENV = "IMGSEARCH_HOME"  # data folder holding the index (default: the per-user data folder)
CACHE_ENV = "IMGSEARCH_CACHE"  # cache folder, e.g. the label bridge's class prompt vectors (default: per-user cache)
NO_TRACE_ENV = "IMGSEARCH_NO_TRACE"  # 1/true/yes/on: run the towers eagerly, without TorchScript traces
AUTH_ENV = "IMGSEARCH_AUTH"  # USER:PASSWORD the web UI asks for when --auth is not given
RAY_FAIL_ENV = "IMGSEARCH_RAY_FAIL"  # test hook "SHARD:TIMES,...": shard SHARD fails its first TIMES attempts
FLICKR8K_ENV = "IMGSEARCH_FLICKR8K"  # the Flickr8k folder the benchmarks read
BENCH_CACHE_ENV = "IMGSEARCH_BENCH_CACHE"  # where the benchmarks keep what they generate
ENGINE_ENV = "IMGSEARCH_ENGINE"  # onnx/torch: what runs the bundled encoders' inference
ONNX_THREADS_ENV = "IMGSEARCH_ONNX_THREADS"  # ONNX Runtime intra-op threads (default: torch's thread count)

ENV_NAMES = (HOME_ENV, CACHE_ENV, NO_TRACE_ENV, AUTH_ENV, RAY_FAIL_ENV, FLICKR8K_ENV, BENCH_CACHE_ENV, ENGINE_ENV,
             ONNX_THREADS_ENV)
APP_NAME = "imgsearch"
REPO_DIR = Path(__file__).resolve().parent.parent
DEFAULT_FLICKR8K = REPO_DIR.parent / "shared" / "data" / "flickr8k"
DEFAULT_BENCH_CACHE = Path("/tmp/imgsearch-bench")
ENGINES = ("onnx", "torch")

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"", "0", "false", "no", "off"})


@dataclass(frozen=True)
class Settings:
    """The process's imgsearch settings; an unset (or empty) variable keeps its default.

    ``home`` and ``cache`` stay None when unset, and ``data_dir`` / ``cache_dir`` then resolve the
    per-user folders (platformdirs is imported only then).
    """

    home: Path | None = None
    cache: Path | None = None
    trace: bool = True
    auth: str | None = None
    ray_fail: tuple[tuple[int, int], ...] = ()  # (shard number, failing attempts), by shard number
    flickr8k: Path = DEFAULT_FLICKR8K
    bench_cache: Path = DEFAULT_BENCH_CACHE
    engine: str = "onnx"  # ONNX Runtime, or torch (training always uses torch)
    onnx_threads: int | None = None  # ONNX Runtime intra-op threads; None: torch.get_num_threads()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """Read every ``IMGSEARCH_*`` variable of ``environ``; a value that cannot be used is a SettingsError."""
        def value(name: str) -> str:
            return environ.get(name, "")

        home, cache = value(HOME_ENV), value(CACHE_ENV)
        flickr8k, bench_cache = value(FLICKR8K_ENV), value(BENCH_CACHE_ENV)
        return cls(
            home=Path(home).expanduser() if home else None,
            cache=Path(cache).expanduser() if cache else None,
            trace=not read_flag(NO_TRACE_ENV, value(NO_TRACE_ENV)),
            auth=value(AUTH_ENV) or None,
            ray_fail=read_fail_plan(RAY_FAIL_ENV, value(RAY_FAIL_ENV)),
            flickr8k=Path(flickr8k) if flickr8k else DEFAULT_FLICKR8K,
            bench_cache=Path(bench_cache) if bench_cache else DEFAULT_BENCH_CACHE,
            engine=read_choice(ENGINE_ENV, value(ENGINE_ENV), ENGINES),
            onnx_threads=read_count(ONNX_THREADS_ENV, value(ONNX_THREADS_ENV)),
        )

    @property
    def data_dir(self) -> Path:
        """Where the index lives unless the caller names a folder: ``home``, else the per-user data folder."""
        if self.home is not None:
            return self.home
        from platformdirs import user_data_path

        return user_data_path(APP_NAME, appauthor=False)

    @property
    def cache_dir(self) -> Path:
        """Where recomputable files go: ``cache``, else the per-user cache folder."""
        if self.cache is not None:
            return self.cache
        from platformdirs import user_cache_path

        return user_cache_path(APP_NAME, appauthor=False)

    @property
    def ray_fail_plan(self) -> dict[int, int]:
        """The Ray test hook as {shard number: attempts that fail}; empty when unset."""
        return dict(self.ray_fail)


def read_flag(name: str, raw: str) -> bool:
    """An on/off variable: 1/true/yes/on or 0/false/no/off (any case), empty for off."""
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise SettingsError(f"${name} must be 1/true/yes/on or 0/false/no/off, not {raw!r}")


def read_choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    """One of ``choices`` (any case; empty for the first)."""
    word = raw.strip().lower()
    if not word:
        return choices[0]
    if word in choices:
        return word
    raise SettingsError(f"${name} must be {' or '.join(choices)}, not {raw!r}")


def read_count(name: str, raw: str) -> int | None:
    """A whole number >= 1, or None when empty."""
    if not raw.strip():
        return None
    try:
        count = int(raw)
    except ValueError:
        count = 0
    if count < 1:
        raise SettingsError(f"${name} must be a whole number >= 1, not {raw!r}")
    return count


def read_fail_plan(name: str, raw: str) -> tuple[tuple[int, int], ...]:
    """``SHARD:TIMES,...`` (TIMES defaults to 1) as sorted (shard, times) pairs; a later shard entry wins."""
    plan: dict[int, int] = {}
    for part in filter(None, raw.split(",")):
        number, _, times = part.partition(":")
        try:
            plan[int(number)] = int(times or 1)
        except ValueError:
            raise SettingsError(f"${name} must look like SHARD:TIMES,... (whole numbers), not {raw!r}") from None
    return tuple(sorted(plan.items()))
