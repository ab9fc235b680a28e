"""The edge layout of the fused attention (pyg_gatv2/fused/layout.py): the
CSR and CSC orders, the sort that builds them, the work ranges, and the
cache of layouts, which must never hand out a stale one."""
import gc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from _fused_cases import (
    BACKENDS,
    dropout_mask,
    features,
    graph,
    outputs_and_grads,
    random_graph,
    reference,
)

from pyg_gatv2.fused import (
    backends,
    clear_layout_cache,
    cpp_library,
    edge_layout,
    fused_gatv2_attention,
    layout,
)
from pyg_gatv2.fused.layout import layout_of


@pytest.mark.parametrize('add_self_loops', [False, True])
def test_csr_and_csc_orders(add_self_loops):
    # Edges by destination in the caller's order, then the implicit loop;
    # by source in CSR order. The edges i -> i make way for the loops.
    edge_index = graph()
    built = layout._build(edge_index, 9, 7, add_self_loops, 'test')
    src, dst = edge_index
    kept = torch.arange(40)
    if add_self_loops:
        kept = kept[src != dst]
    order = kept[torch.argsort(dst[kept], stable=True)]
    col, row, eid = src[order], dst[order], order
    if add_self_loops:
        # The loop of node i follows the other in-edges of i.
        loops = torch.arange(7)
        key = torch.cat([row * 2, loops * 2 + 1])
        merged = torch.argsort(key, stable=True)
        col = torch.cat([col, loops])[merged]
        row = torch.cat([row, loops])[merged]
        eid = torch.cat([eid, loops + 40])[merged]
    assert torch.equal(built.dst_col, col)
    assert torch.equal(built.dst_row, row)
    assert torch.equal(built.dst_eid, eid)
    assert torch.equal(built.kept_eid, eid.sort().values)
    assert torch.equal(built.dst_ptr.diff(), torch.bincount(row,
                                                            minlength=7))
    src_ptr, src_pos, src_row = built.csc
    assert torch.equal(src_pos, torch.argsort(built.dst_col, stable=True))
    assert torch.equal(src_row, built.dst_row[src_pos])
    assert torch.equal(src_ptr.diff(), torch.bincount(built.dst_col,
                                                      minlength=9))


@pytest.mark.parametrize('add_self_loops', [False, True])
def test_torch_sort_builds_the_same_layout_as_the_counting_sort(
        add_self_loops, monkeypatch):
    # Where the C++ library was not built, torch's stable sort builds the
    # layout instead, and must give the same order.
    edge_index = graph(40, 30, 400, seed=2)
    with_library = layout._build(edge_index, 40, 30, add_self_loops, 'test')
    monkeypatch.setattr(cpp_library, 'load', lambda: None)
    without = layout._build(edge_index, 40, 30, add_self_loops, 'test')
    for name in ('dst_ptr', 'dst_col', 'dst_eid'):
        assert torch.equal(getattr(without, name),
                           getattr(with_library, name)), name
    for ours, theirs in zip(without.csc, with_library.csc, strict=True):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize('add_self_loops', [False, True])
def test_int32_indices_give_an_int32_layout_where_torch_sorts(
        add_self_loops, monkeypatch):
    # Where the library does not build the layout (a GPU, or no library),
    # int32 indices give an int32 layout with the same entries.
    edge_index = graph(40, 30, 400, seed=2)
    monkeypatch.setattr(cpp_library, 'load', lambda: None)
    wide = layout._build(edge_index, 40, 30, add_self_loops, 'test')
    narrow = layout._build(edge_index.int(), 40, 30, add_self_loops, 'test')
    ours = [narrow.dst_ptr, narrow.dst_col, narrow.dst_eid, narrow.dst_row,
            *narrow.csc]
    theirs = [wide.dst_ptr, wide.dst_col, wide.dst_eid, wide.dst_row,
              *wide.csc]
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert a.dtype == torch.int32 and b.dtype == torch.int64, i
        assert torch.equal(a.long(), b), i
    assert torch.equal(narrow.kept_eid, wide.kept_eid)


@pytest.mark.parametrize('library', [True, False])
def test_a_malformed_edge_index_gets_the_shape_error(library, monkeypatch):
    # With or without the library (as on a GPU), a wrong shape is refused
    # with the message that says how to fix it, before anything reads it.
    if not library:
        monkeypatch.setattr(cpp_library, 'load', lambda: None)
    for bad in (torch.tensor([0, 1]), torch.zeros(3, 4, dtype=torch.int32)):
        with pytest.raises(ValueError, match=r'\[2, num_edges\]'):
            edge_layout(bad, 5, 5, add_self_loops=True)


@pytest.mark.parametrize('sizes', [(-1, 5), (5, -2)])
def test_a_negative_node_count_is_refused(sizes):
    with pytest.raises(ValueError, match=r'node counts of at least 0'):
        edge_layout(torch.tensor([[0, 1], [1, 2]]), *sizes)


def test_index_dtype(monkeypatch):
    narrow = torch.zeros(2, 10, dtype=torch.int32)
    assert layout.index_dtype(narrow, 5, 5, True) == (
        torch.int64 if cpp_library.load() is not None else torch.int32)
    monkeypatch.setattr(cpp_library, 'load', lambda: None)
    assert layout.index_dtype(narrow, 5, 5, True) == torch.int32
    assert layout.index_dtype(narrow.long(), 5, 5, True) == torch.int64
    # Offsets up to int32's range: 2**31 - 9 edges (a view of no memory)
    # and up to 8 self-loops.
    many = narrow[:, :1].expand(2, 2**31 - 9)
    assert layout.index_dtype(many, 7, 7, True) == torch.int32
    assert layout.index_dtype(many, 8, 8, True) == torch.int64
    assert layout.index_dtype(many, 8, 8, False) == torch.int32


@pytest.mark.parametrize('backend', ['torch', 'triton'])
def test_int32_layouts_give_the_int64_results(backend, monkeypatch):
    # Every backend that runs where torch sorts reads int32 layouts: the
    # same outputs and gradients as with int64 ones, bit for bit.
    if backend not in backends.available():
        pytest.skip(f'{backend} cannot run here: '
                    f'{backends.get(backend, "test").unavailable_reason()}')
    monkeypatch.setattr(cpp_library, 'load', lambda: None)
    edge_index = graph(9, 7, 40, seed=3)
    x_l, x_r, att, et, loop_et = features(9, 7, 40, 2, 3, torch.float64,
                                          seed=3)
    mask = dropout_mask(47, 2, torch.float64)

    def run(index):
        return outputs_and_grads(lambda: fused_gatv2_attention(
            x_l, x_r, att, index, et, loop_edge_term=loop_et,
            add_self_loops=True, dropout_mask=mask,
            return_attention_weights=True, backend=backend),
            [x_l, x_r, att, et, loop_et])
    for i, (a, b) in enumerate(zip(run(edge_index.int()), run(edge_index),
                                   strict=True)):
        assert torch.equal(a, b), i


def test_int32_layouts_under_compile_and_double_backward(monkeypatch):
    # The layout operator's fake gives int32 tensors where the real one
    # does (opcheck), a compiled call takes int32 indices without a graph
    # break, and second derivatives (the edge-wise reference) read them.
    monkeypatch.setattr(cpp_library, 'load', lambda: None)
    edge_index = graph(9, 7, 40, seed=4).int()
    torch.library.opcheck(torch.ops.pyg_gatv2.edge_layout.default,
                          (edge_index, 9, 7, True, 'test'))
    assert all(t.dtype == torch.int32 for t in
               torch.ops.pyg_gatv2.edge_layout(edge_index, 9, 7, True, 't'))
    x_l, x_r, att, et, loop_et = features(9, 7, 40, 2, 3, torch.float64,
                                          seed=4)
    inputs = [x_l, x_r, att, et, loop_et]

    def attention(index):
        return fused_gatv2_attention(
            x_l, x_r, att, index, et, loop_edge_term=loop_et,
            add_self_loops=True, return_attention_weights=True,
            backend='torch')

    def second_order(index):
        out, alpha = attention(index)
        grads = torch.autograd.grad(out.square().sum() + alpha.sum(),
                                    inputs, create_graph=True)
        return torch.autograd.grad(sum(g.square().sum() for g in grads),
                                   inputs)

    for a, b in zip(second_order(edge_index), second_order(edge_index.long()),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch._dynamo.reset()
    compiled = torch.compile(attention, fullgraph=True)
    for a, b in zip(compiled(edge_index), attention(edge_index.long()),
                    strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize('num_chunks', [1, 3, 8, 64])
def test_work_ranges_cover_every_node_in_balanced_runs(num_chunks):
    # A hub receives a third of the edges: the ranges split by edges plus
    # nodes, not by nodes alone.
    edge_index = torch.cat([
        torch.stack([torch.arange(300) % 50, torch.zeros(300).long()]),
        random_graph(50, 50, 600, seed=1)], 1)
    built = edge_layout(edge_index, 50, 50)
    for by, ptr in (('dst', built.dst_ptr), ('src', built.csc[0])):
        bounds = built.bounds(by, num_chunks)
        assert bounds.dtype == np.int64
        assert bounds[0] == 0 and bounds[-1] == 50
        assert (np.diff(bounds) > 0).all()
        assert bounds.size - 1 <= num_chunks
        work = (ptr.numpy() + np.arange(51))[bounds]
        # No range holds more than its share and one node more.
        widest = (np.diff(ptr.numpy()) + 1).max()
        assert np.diff(work).max() <= work[-1] / num_chunks + widest
        assert built.bounds(by, num_chunks) is bounds  # cached


@pytest.mark.parametrize('size', [1, 7, 16, 299, 400])
@pytest.mark.parametrize('index_dtype', [torch.int64, torch.int32])
def test_chunks_cut_the_nodes_of_more_edges_than_their_size(
        size, index_dtype, monkeypatch):
    # Destination 0 receives about 300 edges, source 3 sends about 300;
    # the others have 0 to 30. Torch's sort builds the layout, in the
    # dtype of the indices (as on a GPU).
    monkeypatch.setattr(cpp_library, 'load', lambda: None)
    edge_index = torch.cat([
        torch.stack([torch.arange(300) % 50, torch.zeros(300).long()]),
        torch.stack([torch.full((300, ), 3), torch.arange(300) % 50]),
        random_graph(50, 50, 600, seed=1)], 1)
    built = layout._build(edge_index.to(index_dtype), 50, 50, True, 'test')
    assert built.dst_ptr.dtype == index_dtype
    for by, ptr in (('dst', built.dst_ptr), ('src', built.csc[0])):
        chunks = built.chunks(by, size)
        deg = ptr.diff()
        if size >= deg.max():
            assert chunks is None
            continue
        for t in chunks:
            assert t.dtype == ptr.dtype
        nodes = torch.nonzero(deg > size).view(-1)
        assert torch.equal(chunks.nodes.long(), nodes)
        # Each node's chunks, in order, run from its first position to
        # its last, none longer than the size nor empty.
        start, end = chunks.start, chunks.end
        assert ((end - start <= size) & (end > start)).all()
        for n, node in enumerate(nodes.tolist()):
            first, last = chunks.node_ptr[n], chunks.node_ptr[n + 1]
            assert (chunks.node[first:last] == node).all()
            assert start[first] == ptr[node] and end[last - 1] == ptr[node + 1]
            assert torch.equal(start[first + 1:last], end[first:last - 1])
        assert chunks.node_ptr[0] == 0
        assert chunks.node_ptr[-1] == chunks.node.numel()
        assert built.chunks(by, size) is chunks  # cached


@pytest.mark.parametrize('method', ['bounds', 'chunks'])
@pytest.mark.parametrize('by,count,message', [
    ('in', 4, "by='in'; pass 'dst'"),
    ('dst', 0, 'got 0 where it needs a positive whole number'),
    ('src', -2, 'got -2 where'),
    ('dst', 2.5, 'got 2.5 where'),
    ('src', True, 'got True where')])
def test_work_ranges_and_chunks_refuse_what_they_cannot_cut(method, by,
                                                            count, message):
    built = edge_layout(random_graph(9, 9, 30, seed=2), 9, 9)
    with pytest.raises(ValueError, match=f"'{method}' got .*") as err:
        getattr(built, method)(by, count)
    assert message in str(err.value)


def test_layout_tensors_have_sizes_that_do_not_depend_on_the_data():
    edge_index = graph()
    built = edge_layout(edge_index, 9, 7, add_self_loops=True)
    ptr, col, eid = built.csr_tensors
    assert col.numel() == eid.numel() == 40 + 7
    # The edges i -> i are replaced: they follow the CSR positions.
    replaced = (edge_index[0] == edge_index[1]).nonzero().view(-1)
    assert replaced.numel() >= 4
    assert built.num_kept == 40 - replaced.numel() + 7 == int(ptr[-1])
    assert torch.equal(eid[built.num_kept:].sort().values, replaced)
    assert layout_of(ptr, col, eid, 9, 40, True) is built


def test_layout_of_rebuilds_a_freed_layout_from_its_tensors():
    edge_index = graph()
    clear_layout_cache()
    built = edge_layout(edge_index, 9, 7, add_self_loops=True)
    tensors, kept = built.csr_tensors, built.num_kept
    row, col = built.dst_row.clone(), built.dst_col.clone()
    clear_layout_cache()
    del built
    again = layout_of(*tensors, 9, 40, True)
    assert again.num_kept == kept
    assert torch.equal(again.dst_row, row)
    assert torch.equal(again.dst_col, col)


def test_layout_cache_hit_and_invalidation():
    clear_layout_cache()
    edge_index = random_graph(8, 8, 20)
    first = edge_layout(edge_index, 8, 8, add_self_loops=True)
    assert edge_layout(edge_index, 8, 8, add_self_loops=True) is first
    # Other sizes or self-loop handling are other layouts.
    assert edge_layout(edge_index, 8, 8) is not first
    assert edge_layout(edge_index, 9, 8, add_self_loops=True) is not first
    # Equal content in a new tensor builds a new layout.
    assert edge_layout(edge_index.clone(), 8, 8,
                       add_self_loops=True) is not first
    # An in-place edit, here through a view, invalidates the entry.
    dst = edge_index[1]
    dst[:5] = 7
    second = edge_layout(edge_index, 8, 8, add_self_loops=True)
    assert second is not first
    fresh = edge_layout(edge_index.clone(), 8, 8, add_self_loops=True)
    assert torch.equal(second.dst_ptr, fresh.dst_ptr)
    assert not torch.equal(second.dst_ptr, first.dst_ptr)


@pytest.mark.parametrize('backend', BACKENDS)
def test_in_place_edit_changes_the_result(backend):
    edge_index = random_graph(10, 10, 30)
    x_l, x_r, att, _, _ = features(10, 10, 30, 2, 3, torch.float64)
    with torch.no_grad():
        before = fused_gatv2_attention(x_l, x_r, att, edge_index,
                                       backend=backend)
        edge_index[0] = (edge_index[0] + 1) % 10
        after = fused_gatv2_attention(x_l, x_r, att, edge_index,
                                      backend=backend)
        expected = reference(x_l, x_r, att, edge_index)[0]
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected)


@pytest.mark.parametrize('edit', ['numpy', 'data', 'no_grad'])
def test_layout_cache_sees_edits_that_bypass_the_version_counter(edit):
    clear_layout_cache()
    edge_index = random_graph(8, 8, 20)
    first = edge_layout(edge_index, 8, 8)
    version = edge_index._version
    new_dst = (edge_index[1] + 1) % 8
    if edit == 'numpy':
        edge_index.numpy()[1] = new_dst.numpy()
    elif edit == 'data':
        edge_index.data[1] = new_dst
    else:
        with torch.no_grad():
            edge_index[1] = new_dst
    assert (edge_index._version == version) == (edit != 'no_grad')
    second = edge_layout(edge_index, 8, 8)
    fresh = edge_layout(edge_index.clone(), 8, 8)
    assert second is not first
    assert torch.equal(second.dst_ptr, fresh.dst_ptr)
    assert torch.equal(second.dst_col, fresh.dst_col)
    # Unchanged since, the tensor finds the new layout again.
    assert edge_layout(edge_index, 8, 8) is second


def test_layout_cache_forgets_freed_tensors():
    clear_layout_cache()
    edge_index = random_graph(8, 8, 20)
    edge_layout(edge_index, 8, 8)
    assert len(layout._cache) == 1
    del edge_index
    gc.collect()
    assert len(layout._cache) == 0


def test_layout_cache_keeps_a_few_entries():
    clear_layout_cache()
    graphs = [random_graph(8, 8, 20, seed=seed) for seed in range(12)]
    for g in graphs:
        edge_layout(g, 8, 8)
    assert len(layout._cache) == layout._CACHE_SIZE
    # The most recent ones stay.
    last = edge_layout(graphs[-1], 8, 8)
    assert edge_layout(graphs[-1], 8, 8) is last
    assert len(layout._cache) == layout._CACHE_SIZE


def test_layout_cache_is_safe_under_threads():
    clear_layout_cache()
    graphs = [random_graph(30, 30, 90, seed=seed) for seed in range(12)]
    expected = [edge_layout(g.clone(), 30, 30, add_self_loops=True)
                for g in graphs]

    def lookup(i):
        found = edge_layout(graphs[i % 12], 30, 30, add_self_loops=True)
        return i % 12, found

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lookup, range(400)))
    for i, found in results:
        assert torch.equal(found.dst_col, expected[i].dst_col)
        assert torch.equal(found.dst_eid, expected[i].dst_eid)
    assert len(layout._cache) <= layout._CACHE_SIZE


def test_layout_of_inference_tensor_is_not_cached():
    with torch.inference_mode():
        edge_index = random_graph(5, 5, 10)
    first = edge_layout(edge_index, 5, 5)
    assert edge_layout(edge_index, 5, 5) is not first
    assert int(first.dst_ptr[-1]) == 10


def test_operator_runs_on_inference_tensors():
    with torch.inference_mode():
        edge_index = random_graph(6, 6, 20)
        x_l, x_r, att, _, _ = (t.detach() for t in features(
            6, 6, 20, 2, 3, torch.float64))
        out = fused_gatv2_attention(x_l, x_r, att, edge_index,
                                    add_self_loops=True)
    expected = reference(x_l, x_r, att, edge_index, add_self_loops=True)[0]
    torch.testing.assert_close(out, expected)
