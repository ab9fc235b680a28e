"""A small cache of values computed from live objects.

The layouts of edge tensors (:mod:`pyg_gatv2.fused.layout`) and the edges
of sparse adjacencies (:mod:`pyg_gatv2.adjacency`) are kept in one: at most
a few entries, the least recently used dropped first, each entry dropped
when the object it was computed from is freed (so that a loop over fresh
mini-batches keeps nothing alive), safe to use from several threads.
Both keep a copy of the indices of a CPU entry, which
:func:`same_values` compares with the live tensor before the entry is used.
"""
import threading
import weakref
from collections import OrderedDict
from typing import Any, Hashable, List, Optional, Tuple

import numpy as np
from torch import Tensor


def same_values(copy: Tensor, tensor: Tensor) -> bool:
    """Whether the CPU tensors ``copy`` and ``tensor`` hold the same values
    (of any two integer dtypes), in one pass in the calling thread:
    :func:`torch.equal` would go through the intra-op thread pool, whose
    start-up costs more than the pass."""
    return bool(np.array_equal(copy.numpy(), tensor.numpy()))


class WeakCache:
    """Values by key, each kept while the object it belongs to lives.

    Args:
        size (int): The most entries kept.
    """
    def __init__(self, size: int):
        self.size = size
        self._entries: 'OrderedDict[Hashable, Tuple[weakref.ref, Any]]' = (
            OrderedDict())
        self._lock = threading.Lock()
        # Keys of freed objects whose entries could not be dropped at once:
        # a weak-reference callback can run at any time, also in a thread
        # that holds the lock, so it never waits for it and leaves the key
        # here instead.
        self._freed: List[Hashable] = []

    def get(self, key: Hashable, obj: object) -> Optional[Any]:
        """The value kept under ``key`` for ``obj`` itself (not for a freed
        object whose id or memory ``obj`` reuses), now the most recently
        used; :obj:`None` where there is none."""
        with self._lock:
            self._drop_freed()
            entry = self._entries.get(key)
            if entry is None or entry[0]() is not obj:
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def put(self, key: Hashable, obj: object, value: Any) -> None:
        """Keeps ``value`` under ``key`` until ``obj`` is freed or more
        recent entries push it out."""
        ref = weakref.ref(obj, lambda _: self._forget(key))
        with self._lock:
            self._entries[key] = (ref, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Drops every entry."""
        with self._lock:
            self._entries.clear()
            self._freed.clear()

    def __len__(self) -> int:
        with self._lock:
            self._drop_freed()
            return len(self._entries)

    def _forget(self, key: Hashable) -> None:
        if self._lock.acquire(blocking=False):
            try:
                self._entries.pop(key, None)
            finally:
                self._lock.release()
        else:
            self._freed.append(key)

    def _drop_freed(self) -> None:
        while self._freed:
            self._entries.pop(self._freed.pop(), None)
