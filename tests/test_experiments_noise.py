import pytest
import torch

from pyg_gatv2.experiments.noise import add_noise_edges


def keys(edge_index, num_nodes):
    return (edge_index[0] * num_nodes + edge_index[1]).tolist()


def ring(num_nodes):
    nodes = torch.arange(num_nodes)
    one_way = torch.stack([nodes, (nodes + 1) % num_nodes])
    return torch.cat([one_way, one_way.flip(0)], dim=1)


@pytest.mark.parametrize('ratio', [0.0, 0.1, 0.5, 1.0, 3.0])
def test_noise_edges_are_new_distinct_pairs(ratio):
    edge_index = ring(50)
    out = add_noise_edges(edge_index, 50, ratio,
                          torch.Generator().manual_seed(1))
    assert torch.equal(out[:, :100], edge_index)
    noise = out[:, 100:]
    assert noise.size(1) == round(ratio * 100)
    assert (noise[0] != noise[1]).all()  # no self-loops
    new = keys(noise, 50)
    assert len(set(new)) == len(new)  # no pair twice
    assert not set(new) & set(keys(edge_index, 50))  # no existing edge
    assert out.dtype == torch.long


def test_noise_is_uniform_over_the_free_pairs():
    # 4 nodes, edges 0 -> 1 and 2 -> 3: 10 free pairs, 2 drawn per call.
    edge_index = torch.tensor([[0, 2], [1, 3]])
    counts = torch.zeros(16)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2000):
        noise = add_noise_edges(edge_index, 4, 1.0, generator)[:, 2:]
        counts[torch.tensor(keys(noise, 4))] += 1
    free = [k for k in range(16) if k // 4 != k % 4 and k not in (1, 11)]
    assert counts.sum() == counts[free].sum() == 4000
    # 400 expected per pair: a binomial's 5 standard deviations are 95.
    assert ((counts[free] - 400).abs() < 95).all(), counts[free]


def test_one_generator_one_noise():
    edge_index = ring(30)
    a, b, c = (add_noise_edges(edge_index, 30, 0.4,
                               torch.Generator().manual_seed(seed))
               for seed in (3, 3, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_every_free_pair_when_asked_for_all():
    # 3 nodes, 6 pairs of distinct nodes, of which 2 edges (a loop and a
    # repeated edge do not count): 4 free.
    edge_index = torch.tensor([[0, 1, 2, 0], [1, 0, 2, 1]])
    out = add_noise_edges(edge_index, 3, 1.0)
    assert sorted(keys(out[:, 4:], 3)) == [2, 5, 6, 7]
    with pytest.raises(ValueError, match='only 4 pairs'):
        add_noise_edges(edge_index, 3, 1.25)


@pytest.mark.parametrize('args, error, match', [
    ((torch.zeros(3, 2, dtype=torch.long), 4, 0.1), ValueError, 'shape'),
    ((torch.zeros(2, 2), 4, 0.1), TypeError, 'integer edge indices'),
    ((torch.zeros(2, 2, dtype=torch.long), -1, 0.1), ValueError,
     'num_nodes'),
    ((torch.zeros(2, 2, dtype=torch.long), 4, -0.1), ValueError, 'ratio'),
    ((torch.zeros(2, 2, dtype=torch.long), 4, float('nan')), ValueError,
     'ratio'),
    ((torch.tensor([[0], [4]]), 4, 0.1), ValueError, 'index'),
])
def test_bad_input_is_refused(args, error, match):
    with pytest.raises(error, match=match):
        add_noise_edges(*args)
