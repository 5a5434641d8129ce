"""One cache root for everything viprog derives (model, shapes worlds, GQA indexes)."""

from pathlib import Path

from viprog.cache import cache_root


def test_the_cache_root_follows_viprog_cache_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.delenv("VIPROG_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "viprog"
    monkeypatch.setenv("VIPROG_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    monkeypatch.delenv("VIPROG_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "viprog"
