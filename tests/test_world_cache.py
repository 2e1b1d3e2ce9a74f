"""The user's cache of built worlds (commands/testbed/cache.py) and the demo's use of it (fast: a
world is faked as the files a finished build leaves; the build itself is tested in test_testbed.py
and its determinism, which makes a cached world the built one, in test_install.py)."""

import json
from pathlib import Path

import pytest

from rayrejuv.commands.testbed.cache import cached_world, restore_world, store_world
from rayrejuv.commands.testbed.config import TinyWorldConfig


def _fake_build(cfg: TinyWorldConfig, complete: bool = True) -> None:
    out = Path(cfg.out)
    (out / "base").mkdir(parents=True)
    (out / "base" / "model.safetensors").write_bytes(bytes(range(256)) * 4)
    (out / ".state").mkdir()
    (out / ".state" / "sft-last.pt").write_bytes(b"resumable state")
    (out / "testbed.json").write_text(json.dumps({"config": cfg.fingerprint(), "complete": complete}))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_stored_world_is_restored_byte_for_byte_without_its_resume_state(tmp_path, cache):
    a = TinyWorldConfig(out=tmp_path / "a")
    _fake_build(a)
    stored = store_world(a)
    assert stored == cached_world(a) and stored.parent == cache / "rayrejuv" and stored.name.startswith("world-")
    assert store_world(a) is None  # cached already: kept
    b = TinyWorldConfig(out=tmp_path / "b")
    assert restore_world(b) == stored
    assert (tmp_path / "b" / "base" / "model.safetensors").read_bytes() == bytes(range(256)) * 4
    assert json.loads((tmp_path / "b" / "testbed.json").read_text())["complete"] is True
    assert not (tmp_path / "b" / ".state").exists() and not (stored / ".state").exists()
    assert restore_world(b) is None  # b exists now: never overwritten


def test_only_a_finished_build_of_the_same_world_is_cached_or_restored(tmp_path, cache):
    partial = TinyWorldConfig(out=tmp_path / "p")
    _fake_build(partial, complete=False)
    assert store_world(partial) is None and not cached_world(partial).exists()
    other = TinyWorldConfig(out=tmp_path / "o", seed=1)
    assert cached_world(other) != cached_world(partial)  # the key is the world
    _fake_build(other)
    store_world(other)
    assert restore_world(TinyWorldConfig(out=tmp_path / "x")) is None  # seed 0 is not cached
    # a cache entry whose manifest names another world (edited by hand) is not trusted
    entry = cached_world(other)
    (entry / "testbed.json").write_text(json.dumps({"config": partial.fingerprint(), "complete": True}))
    assert restore_world(TinyWorldConfig(out=tmp_path / "y", seed=1)) is None


def test_the_demo_builds_a_world_once_and_copies_it_after(tmp_path, cache, monkeypatch):
    from rayrejuv.commands.demo import driver
    from rayrejuv.commands.demo.config import QUICK, DemoConfig
    from rayrejuv.commands.testbed import driver as testbed
    from rayrejuv.commands.testbed.driver import WorldLayout
    from rayrejuv.config.base import merge_overrides, validate_config
    from rayrejuv.config.runtime import TrackingConfig

    builds = []

    def build(tcfg, progress):
        builds.append(tcfg.out)
        _fake_build(tcfg)

    monkeypatch.setattr(testbed, "build_testbed", build)
    said = []
    off = TrackingConfig(enabled=False)
    for name in ("d1", "d2"):
        cfg = validate_config(DemoConfig, merge_overrides(QUICK, {"out": str(tmp_path / name)}))
        driver.build_world(cfg, WorldLayout(tmp_path / name / "testbed"), off, False, said.append)
    assert builds == [tmp_path / "d1" / "testbed"]  # the second demo copied it
    assert (tmp_path / "d2" / "testbed" / "base" / "model.safetensors").is_file()
    assert len(said) == 1 and "world copied from the cache" in said[0]
    cfg = validate_config(DemoConfig, merge_overrides(QUICK, {"out": str(tmp_path / "d3"), "world_cache": False}))
    driver.build_world(cfg, WorldLayout(tmp_path / "d3" / "testbed"), off, False, said.append)
    assert builds[-1] == tmp_path / "d3" / "testbed"  # world_cache false: built
