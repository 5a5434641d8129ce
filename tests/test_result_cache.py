"""`ResultCache`, the one cache of primitive results (local PrimitiveServer and Ray model
actors): bounded by bytes, least recently used out first."""

from viprog.executor.lru import ENTRY_OVERHEAD, ResultCache
from viprog.executor.server import PrimitiveServer
from viprog.primitives.profile import Profile


def test_the_bound_is_in_bytes_and_the_least_recently_used_go_first():
    cache = ResultCache(max_bytes=3 * (ENTRY_OVERHEAD + 100))
    for i in range(3):
        cache.put(("find", i), "x" * 80)
    assert len(cache) == 3 and cache.bytes <= cache.max_bytes
    assert cache.lookup(("find", 0)) == (True, "x" * 80)  # now the most recently used
    cache.put(("find", 3), "y" * 80)
    assert ("find", 1) not in cache and ("find", 0) in cache and ("find", 3) in cache
    cache.put(("find", 4), ["z" * 30] * 10)  # one larger result pushes out the two least recently used
    assert list(cache) == [("find", 3), ("find", 4)] and cache.bytes <= cache.max_bytes


def test_a_result_larger_than_the_bound_is_not_kept_and_replacing_recounts():
    cache = ResultCache(max_bytes=1000)
    cache.put("small", "a")
    cache.put("huge", "b" * 5000)
    assert "huge" not in cache and "small" in cache
    before = cache.bytes
    cache.put("small", "a" * 100)
    assert len(cache) == 1 and cache.bytes == before + 99
    cache.clear()
    assert len(cache) == 0 and cache.bytes == 0


def test_the_primitive_server_keeps_its_results_in_one():
    server = PrimitiveServer(Profile(), cache_max_bytes=5000)
    assert isinstance(server.cache, ResultCache) and server.cache.max_bytes == 5000
