"""Structural noise for the robustness experiment of the GATv2 paper.

Section 4.4 of `"How Attentive are Graph Attention Networks?"
<https://arxiv.org/abs/2105.14491>`_: given a graph :math:`G = (V, E)` and
a noise ratio :math:`p`, :math:`p \\cdot |E|` pairs are drawn at random from
the node pairs that are not edges, :math:`V \\times V \\setminus E`, and a
network is trained and tested on :math:`G' = (V, E \\cup E')`. The paper
reports that GATv2's accuracy falls more slowly than GAT's as :math:`p`
grows.
"""
from typing import Optional

import torch
from torch import Tensor

from pyg_gatv2.checks import check_index_range

__all__ = ['add_noise_edges']


def add_noise_edges(edge_index: Tensor, num_nodes: int, ratio: float,
                    generator: Optional[torch.Generator] = None) -> Tensor:
    r"""Returns :obj:`edge_index` followed by
    :math:`\mathrm{round}(\mathrm{ratio} \cdot |E|)` noise edges.

    Each noise edge :math:`j \to i` is a pair of distinct nodes that is not
    an edge of :obj:`edge_index` and not drawn before, uniform over such
    pairs; :math:`|E|` counts the columns of :obj:`edge_index`. The edges
    are directed, as in the paper: a graph stored with both directions of
    every edge (like PyG's Planetoid graphs) gets noise edges whose reverse
    is mostly absent.

    Args:
        edge_index (torch.Tensor): The graph's edges, ``[2, num_edges]``.
        num_nodes (int): Number of nodes.
        ratio (float): Noise edges per edge of the graph, at least 0.
        generator (torch.Generator, optional): Source of the random draws
            (CPU). (default: torch's global generator)

    Returns:
        torch.Tensor: ``[2, num_edges + num_noise]``, the first
        ``num_edges`` columns those of :obj:`edge_index`.
    """
    caller = 'add_noise_edges'
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"'{caller}' expects edge_index of shape [2, "
                         f'num_edges], got {tuple(edge_index.shape)}')
    if edge_index.dtype.is_floating_point or edge_index.dtype == torch.bool:
        raise TypeError(f"'{caller}' expects integer edge indices, got "
                        f'{edge_index.dtype}')
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or (
            num_nodes < 0):
        raise ValueError(f"'{caller}' expects an integer num_nodes >= 0, "
                         f'got {num_nodes!r}')
    if not ratio >= 0.0:
        raise ValueError(f"'{caller}' expects a ratio >= 0, got {ratio!r}")
    check_index_range(edge_index, num_nodes, num_nodes, caller)
    device = edge_index.device
    edge_index = edge_index.long().cpu()
    num_noise = round(ratio * edge_index.size(1))
    # Each pair (j, i) as the key j * num_nodes + i.
    existing = (edge_index[0] * num_nodes + edge_index[1]).unique()
    num_loops = int((existing // num_nodes == existing % num_nodes).sum())
    free = num_nodes * (num_nodes - 1) - (existing.numel() - num_loops)
    if num_noise > free:
        raise ValueError(
            f"'{caller}' cannot add {num_noise} noise edges (ratio {ratio} "
            f'of {edge_index.size(1)} edges): a graph of {num_nodes} nodes '
            f'has only {free} pairs of distinct nodes that are not edges; '
            'lower the ratio')
    drawn = torch.empty(0, dtype=torch.long)
    while drawn.numel() < num_noise:
        # Draw more than needed, drop loops, edges and repeats, top up.
        need = num_noise - drawn.numel()
        keys = torch.randint(num_nodes * num_nodes, (2 * need + 16, ),
                             generator=generator)
        keys = keys[keys // num_nodes != keys % num_nodes]
        keys = keys[~torch.isin(keys, existing)]
        keys = _unique_in_order(torch.cat([drawn, keys]))
        drawn = keys[:num_noise]
    noise = torch.stack([drawn // num_nodes, drawn % num_nodes])
    return torch.cat([edge_index, noise], dim=1).to(device)


def _unique_in_order(keys: Tensor) -> Tensor:
    """``keys`` without repeats, each kept at its first position."""
    unique, inverse = torch.unique(keys, return_inverse=True)
    first = torch.full((unique.numel(), ), keys.numel())
    first.scatter_reduce_(0, inverse, torch.arange(keys.numel()), 'amin')
    return keys[first.sort().values]
