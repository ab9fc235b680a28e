import gc
import threading

import torch

from pyg_gatv2.weak_cache import WeakCache, same_values


class Obj:
    pass


def test_a_value_is_kept_for_its_object_only():
    cache = WeakCache(4)
    a, b = Obj(), Obj()
    cache.put('k', a, 1)
    assert cache.get('k', a) == 1
    # Another object under the same key (as a new tensor that reuses a
    # freed one's id) gets nothing.
    assert cache.get('k', b) is None
    assert cache.get('other', a) is None


def test_the_least_recently_used_entry_goes_first():
    cache = WeakCache(2)
    objs = [Obj() for _ in range(3)]
    cache.put(0, objs[0], 'a')
    cache.put(1, objs[1], 'b')
    assert cache.get(0, objs[0]) == 'a'  # now the most recent
    cache.put(2, objs[2], 'c')
    assert len(cache) == 2
    assert cache.get(1, objs[1]) is None
    assert cache.get(0, objs[0]) == 'a' and cache.get(2, objs[2]) == 'c'


def test_an_entry_goes_with_its_object():
    cache = WeakCache(4)
    a = Obj()
    cache.put('k', a, 1)
    del a
    gc.collect()
    assert len(cache) == 0


def test_an_object_freed_while_the_lock_is_held_is_dropped_later():
    cache = WeakCache(4)
    a, b = Obj(), Obj()
    cache.put('a', a, 1)
    cache.put('b', b, 2)
    with cache._lock:
        # The callback runs in this thread, which holds the lock: it must
        # not wait for it.
        del a
        gc.collect()
        assert 'a' in cache._entries
    assert len(cache) == 1
    assert cache.get('b', b) == 2


def test_clear_drops_everything():
    cache = WeakCache(4)
    a = Obj()
    cache.put('k', a, 1)
    cache.clear()
    assert len(cache) == 0 and cache.get('k', a) is None


def test_threads_share_one_cache():
    cache = WeakCache(8)
    errors = []

    def work(n):
        try:
            for i in range(300):
                obj = Obj()
                cache.put((n, i % 5), obj, i)
                assert cache.get((n, i % 5), obj) in (i, None)
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n, )) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert len(cache) <= 8


def test_same_values_compares_values_across_index_dtypes():
    edge_index = torch.tensor([[0, 1, 2], [2, 0, 1]])
    copy = edge_index.to(torch.int32)
    assert same_values(copy, edge_index)
    changed = edge_index.clone()
    changed[1, 2] = 3
    assert not same_values(copy, changed)
    assert not same_values(copy, edge_index[:, :2])
