"""Settings: every IMGSEARCH_* variable read once, with today's defaults, strictly; and the components that use it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from retrieval.errors import ImgSearchError, SettingsError
from retrieval.settings import (AUTH_ENV, BENCH_CACHE_ENV, CACHE_ENV, DEFAULT_BENCH_CACHE, DEFAULT_FLICKR8K,
                                ENGINE_ENV, ENV_NAMES, FLICKR8K_ENV, HOME_ENV, NO_TRACE_ENV, ONNX_THREADS_ENV,
                                RAY_FAIL_ENV, Settings)

REPO = Path(__file__).resolve().parent.parent


def test_defaults_with_nothing_set():
    from platformdirs import user_cache_path, user_data_path

    s = Settings.from_env({})
    assert s == Settings()
    assert s.data_dir == user_data_path("imgsearch", appauthor=False)
    assert s.cache_dir == user_cache_path("imgsearch", appauthor=False)
    assert (s.home, s.cache, s.trace, s.auth, s.ray_fail_plan) == (None, None, True, None, {})
    assert s.flickr8k == DEFAULT_FLICKR8K == REPO.parent / "shared" / "data" / "flickr8k"
    assert s.bench_cache == DEFAULT_BENCH_CACHE == Path("/tmp/imgsearch-bench")
    assert (s.engine, s.onnx_threads) == ("onnx", None)


def test_empty_values_keep_the_defaults():
    assert Settings.from_env({name: "" for name in ENV_NAMES}) == Settings()


def test_each_variable_is_read(tmp_path):
    s = Settings.from_env({HOME_ENV: str(tmp_path / "home"), CACHE_ENV: "~/imgsearch-cache", NO_TRACE_ENV: "1",
                           AUTH_ENV: "ann:secret", RAY_FAIL_ENV: "2:9,1:1,3", FLICKR8K_ENV: "/data/f8k",
                           BENCH_CACHE_ENV: "/scratch/bench", ENGINE_ENV: " Torch ", ONNX_THREADS_ENV: "3"})
    assert s.home == s.data_dir == tmp_path / "home"
    assert s.cache == s.cache_dir == Path("~/imgsearch-cache").expanduser()
    assert s.trace is False
    assert s.auth == "ann:secret"
    assert s.ray_fail == ((1, 1), (2, 9), (3, 1)) and s.ray_fail_plan == {1: 1, 2: 9, 3: 1}
    assert (s.flickr8k, s.bench_cache) == (Path("/data/f8k"), Path("/scratch/bench"))
    assert (s.engine, s.onnx_threads) == ("torch", 3)


def test_from_env_reads_the_process_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(HOME_ENV, str(tmp_path))
    monkeypatch.setenv(NO_TRACE_ENV, "yes")
    s = Settings.from_env()
    assert s.data_dir == tmp_path and not s.trace


@pytest.mark.parametrize("value, trace", [("1", False), ("TRUE", False), (" on ", False), ("yes", False),
                                          ("0", True), ("false", True), ("Off", True), ("no", True)])
def test_no_trace_is_an_on_off_switch(value, trace):
    assert Settings.from_env({NO_TRACE_ENV: value}).trace is trace


@pytest.mark.parametrize("name, value", [(NO_TRACE_ENV, "maybe"), (RAY_FAIL_ENV, "one:1"), (RAY_FAIL_ENV, "1:x"),
                                         (RAY_FAIL_ENV, "1:2:3"), (ENGINE_ENV, "tensorrt"), (ONNX_THREADS_ENV, "0"),
                                         (ONNX_THREADS_ENV, "two"), (ONNX_THREADS_ENV, "-1")])
def test_a_bad_value_is_a_one_line_settings_error(name, value):
    with pytest.raises(SettingsError) as info:
        Settings.from_env({name: value})
    message = str(info.value)
    assert isinstance(info.value, ImgSearchError) and "\n" not in message
    assert message.startswith(f"${name} must ") and repr(value) in message


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().trace = False


def test_traced_forward_takes_its_switch_from_the_settings_when_built(monkeypatch):
    import torch

    from retrieval.encoders.towers import TracedForward

    layer = torch.nn.Linear(3, 2).eval()
    x = torch.ones(1, 3)
    assert TracedForward(layer).enabled and not TracedForward(layer, enabled=False).enabled
    monkeypatch.setenv(NO_TRACE_ENV, "1")
    eager, forced = TracedForward(layer), TracedForward(layer, enabled=True)
    monkeypatch.delenv(NO_TRACE_ENV)
    assert not eager.enabled  # read when built, not when called
    with torch.inference_mode():
        torch.testing.assert_close(eager(False, x), layer(x))
        torch.testing.assert_close(forced(False, x), layer(x))
    assert not eager._graphs and forced._graphs


def test_bench_config_defaults_come_from_the_settings(monkeypatch, tmp_path):
    from benchmarks.run import BenchConfig

    monkeypatch.setenv(FLICKR8K_ENV, str(tmp_path / "f8k"))
    monkeypatch.setenv(BENCH_CACHE_ENV, str(tmp_path / "cache"))
    cfg = BenchConfig()
    assert (cfg.flickr_dir, cfg.cache_dir) == (tmp_path / "f8k", tmp_path / "cache")
    monkeypatch.delenv(FLICKR8K_ENV)
    assert BenchConfig().flickr_dir == DEFAULT_FLICKR8K


def test_ray_indexer_takes_its_failure_hook_from_the_settings_when_built(monkeypatch, tmp_path):
    pytest.importorskip("ray")
    from conftest import FakeEncoder
    from indexer.distributed import RayIndexer
    from retrieval.store import Store

    with Store(tmp_path / "db") as store:
        monkeypatch.setenv(RAY_FAIL_ENV, "1:1,2:9")
        hooked = RayIndexer(FakeEncoder(), store, show_progress=False)
        monkeypatch.delenv(RAY_FAIL_ENV)
        assert hooked.fail == {1: 1, 2: 9}
        assert RayIndexer(FakeEncoder(), store, show_progress=False).fail == {}
        assert RayIndexer(FakeEncoder(), store, show_progress=False, fail={3: 2}).fail == {3: 2}
        monkeypatch.setenv(RAY_FAIL_ENV, "x")
        with pytest.raises(SettingsError):
            RayIndexer(FakeEncoder(), store, show_progress=False)
