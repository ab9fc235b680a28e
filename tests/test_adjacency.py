import gc

import pytest
import torch
from torch_geometric.typing import SparseTensor

from pyg_gatv2 import GATv2Conv
from pyg_gatv2 import adjacency as adjacency_module
from pyg_gatv2.adjacency import (
    clear_sparse_edge_cache,
    is_sparse_adjacency,
    sparse_edge_index,
    sparse_message_order,
)
from pyg_gatv2.fused import edge_layout

# Entries [target, source] of a 4 x 5 adjacency, one of them twice.
ROW = torch.tensor([0, 0, 1, 1, 2, 3, 3])
COL = torch.tensor([1, 4, 0, 0, 2, 3, 4])


def adjacency(kind):
    """The adjacency of ROW and COL as ``kind``, on copies of them (the
    tests edit an adjacency's indices)."""
    size = (4, 5)
    row, col = ROW.clone(), COL.clone()
    values = torch.ones(row.numel())
    if kind == 'sparse_tensor':
        return SparseTensor(row=row, col=col, sparse_sizes=size)
    if kind == 'coo':
        return torch.sparse_coo_tensor(torch.stack([row, col]), values, size)
    ptr = torch.tensor([0, 2, 4, 5, 7])
    if kind == 'csr':
        return torch.sparse_csr_tensor(ptr, col, values, size)
    order = torch.argsort(col, stable=True)
    ptr = torch.tensor([0, 2, 3, 4, 5, 7])
    return torch.sparse_csc_tensor(ptr, row[order], values[order], size)


def edge_set(edge_index):
    return sorted(map(tuple, edge_index.t().tolist()))


@pytest.fixture(autouse=True)
def empty_cache():
    clear_sparse_edge_cache()
    yield
    clear_sparse_edge_cache()


@pytest.mark.parametrize('kind', ['sparse_tensor', 'coo', 'csr', 'csc'])
def test_edges_are_the_entries_sources_first(kind):
    adj = adjacency(kind)
    assert is_sparse_adjacency(adj)
    edges = sparse_edge_index(adj, add_self_loops=False)
    assert edge_set(edges) == edge_set(torch.stack([COL, ROW]))


@pytest.mark.parametrize('kind', ['coo', 'csr', 'csc'])
def test_self_loops_merge_the_duplicates_of_a_torch_sparse_adjacency(kind):
    edges = sparse_edge_index(adjacency(kind), add_self_loops=True)
    expected = sorted(set(zip(COL.tolist(), ROW.tolist(), strict=True)),
                      key=lambda edge: (edge[1], edge[0]))
    assert list(map(tuple, edges.t().tolist())) == expected


def test_a_sparse_tensor_keeps_its_duplicates_with_self_loops():
    # As torch_sparse.set_diag, which message passing applies to it.
    edges = sparse_edge_index(adjacency('sparse_tensor'), add_self_loops=True)
    assert edge_set(edges) == edge_set(torch.stack([COL, ROW]))


@pytest.mark.parametrize('num_targets', [4, 6])
def test_message_order_of_a_sparse_tensor_is_set_diag_s(num_targets):
    """The fused operator's edge ids where set_diag puts the entries and
    the loops: the ids as values, through set_diag."""
    import torch_sparse
    row = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, num_targets - 1])
    col = torch.tensor([1, 4, 0, 1, 1, 2, 0, 4, 0])
    adj = SparseTensor(row=row, col=col, sparse_sizes=(num_targets, 5))
    edges = sparse_edge_index(adj, add_self_loops=True)
    num_loops = min(num_targets, 5)
    ids = SparseTensor(row=edges[1], col=edges[0],
                       value=torch.arange(edges.size(1)),
                       sparse_sizes=(num_targets, 5), is_sorted=True)
    expected = torch_sparse.set_diag(
        ids, torch.arange(num_loops) + edges.size(1)).storage.value()
    assert torch.equal(sparse_message_order(adj), expected)


def test_plain_tensors_are_not_sparse_adjacencies():
    assert not is_sparse_adjacency(torch.stack([COL, ROW]))
    assert not is_sparse_adjacency([[0], [1]])


@pytest.mark.parametrize('kind', ['sparse_tensor', 'csr'])
def test_the_edges_and_the_layout_are_reused_across_calls(kind):
    adj = adjacency(kind)
    edges = sparse_edge_index(adj, add_self_loops=True)
    assert sparse_edge_index(adj, add_self_loops=True) is edges
    assert sparse_edge_index(adj, add_self_loops=False) is not edges

    conv = GATv2Conv(3, 2)
    x = (torch.randn(5, 3), torch.randn(4, 3))
    conv(x, adj)
    layout = edge_layout(sparse_edge_index(adj, True), 5, 4, True)
    conv(x, adj).sum().backward()
    assert edge_layout(sparse_edge_index(adj, True), 5, 4, True) is layout


def test_an_edit_that_bumps_the_version_reads_the_edges_again():
    adj = adjacency('csr')
    edges = sparse_edge_index(adj, add_self_loops=False)
    adj.col_indices()[0] = 2
    again = sparse_edge_index(adj, add_self_loops=False)
    assert again is not edges
    assert (2, 0) in edge_set(again) and (1, 0) not in edge_set(again)


@pytest.mark.parametrize('kind', ['sparse_tensor', 'csr'])
def test_an_edit_that_bypasses_the_version_counter_is_seen(kind):
    adj = adjacency(kind)
    col = (adj.storage.col() if kind == 'sparse_tensor'
           else adj.col_indices())
    edges = sparse_edge_index(adj, add_self_loops=False)
    version = col._version
    col.numpy()[0] = 2
    assert col._version == version
    again = sparse_edge_index(adj, add_self_loops=False)
    assert again is not edges
    assert (2, 0) in edge_set(again) and (1, 0) not in edge_set(again)

    conv = GATv2Conv(3, 2, add_self_loops=False).double()
    x = (torch.randn(5, 3, dtype=torch.float64),
         torch.randn(4, 3, dtype=torch.float64))
    torch.testing.assert_close(conv(x, adj), conv(x, again))


def test_a_freed_adjacency_leaves_the_cache():
    adj = adjacency('csr')
    sparse_edge_index(adj, add_self_loops=False)
    assert len(adjacency_module._cache) == 1
    del adj
    gc.collect()
    assert len(adjacency_module._cache) == 0


def test_the_cache_keeps_the_latest_few():
    kept = [adjacency('coo') for _ in range(adjacency_module._CACHE_SIZE + 2)]
    edges = [sparse_edge_index(adj, add_self_loops=False) for adj in kept]
    assert len(adjacency_module._cache) == adjacency_module._CACHE_SIZE
    assert sparse_edge_index(kept[-1], add_self_loops=False) is edges[-1]
    assert sparse_edge_index(kept[0], add_self_loops=False) is not edges[0]


@pytest.mark.parametrize('kind', ['sparse_tensor', 'csr'])
def test_an_adjacency_made_in_inference_mode_is_read_every_time(kind):
    with torch.inference_mode():
        adj = adjacency(kind)
    edges = sparse_edge_index(adj, add_self_loops=True)
    assert edge_set(edges) == edge_set(torch.stack([COL, ROW]).unique(dim=1)
                                       if kind == 'csr' else
                                       torch.stack([COL, ROW]))
    assert len(adjacency_module._cache) == 0
    conv = GATv2Conv(3, 2).double()
    x = (torch.randn(5, 3, dtype=torch.float64),
         torch.randn(4, 3, dtype=torch.float64))
    with torch.inference_mode():
        inside = conv(x, adj)
    torch.testing.assert_close(conv(x, adj), inside)
    torch.testing.assert_close(inside, conv(x, edges))
