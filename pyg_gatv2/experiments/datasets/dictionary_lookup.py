"""The DictionaryLookup task: a graph problem that static attention fails.

Section 4.1 of `"How Attentive are Graph Attention Networks?"
<https://arxiv.org/abs/2105.14491>`_. Each graph is a dictionary of ``k``
(key, value) pairs and ``k`` queries; every query must fetch the value stored
under its own key. Selecting the right key needs an attention ranking that
depends on the query, which GATv2's dynamic attention can express and GAT's
static attention cannot.
"""

import itertools
import math

import torch
from torch import Tensor
from torch_geometric.data import Data

__all__ = ['DictionaryLookup', 'dictionary_lookup_graph']

# How the values of a graph are drawn: the paper's permutations, or k
# independent draws.
VALUES = ('permutation', 'with_replacement')


def _check_permutation(perm: Tensor, name: str) -> Tensor:
    perm = torch.as_tensor(perm)
    if perm.dim() != 1 or perm.numel() < 2:
        raise ValueError(f"'{name}' expects a 1-D permutation of 0..k-1 with "
                         f'k >= 2, got shape {tuple(perm.shape)}')
    if perm.dtype.is_floating_point or perm.dtype == torch.bool:
        raise TypeError(f"'{name}' expects an integer permutation, got "
                        f'dtype {perm.dtype}')
    k = perm.numel()
    if not torch.equal(perm.sort().values, torch.arange(k, dtype=perm.dtype)):
        raise ValueError(f"'{name}' expects a permutation of 0..{k - 1} "
                         f'(each value exactly once), got {perm.tolist()}')
    return perm.long()


def dictionary_lookup_graph(perm: Tensor) -> Data:
    r"""One DictionaryLookup graph for the dictionary ``key i -> perm[i]``.

    Nodes ``0..k-1`` are key nodes: node ``i`` holds the pair
    ``(i, perm[i])``. Nodes ``k..2k-1`` are query nodes: node ``k + i`` holds
    ``(i, k)``, where the value id ``k`` means "empty". Every key node has an
    edge to every query node (``k * k`` edges, key to query, key-major), and
    query ``i`` is labelled with the value of key ``i``, ``perm[i]``.

    Args:
        perm (torch.Tensor): A permutation of ``0..k-1`` with ``k >= 2``.

    Returns:
        torch_geometric.data.Data: With ``x`` (``[2k, 2]``, long: key id and
        value id per node), ``edge_index`` (``[2, k * k]``), ``y`` (``[k]``,
        the targets of the query nodes in order) and ``query_mask``
        (``[2k]``, bool, true on query nodes).
    """
    perm = _check_permutation(perm, 'dictionary_lookup_graph')
    return _graph(perm, *_layout(perm.numel()))


def _layout(k: int) -> tuple[Tensor, Tensor]:
    """The edges and the query mask, the same in every graph of size k."""
    keys = torch.arange(k)
    edge_index = torch.stack([keys.repeat_interleave(k), keys.repeat(k) + k])
    return edge_index, torch.arange(2 * k) >= k


def _graph(perm: Tensor, edge_index: Tensor, query_mask: Tensor) -> Data:
    k = perm.numel()
    keys = torch.arange(k)
    x = torch.cat([
        torch.stack([keys, perm], dim=1),
        torch.stack([keys, torch.full((k, ), k)], dim=1),
    ], dim=0)
    return Data(x=x, edge_index=edge_index, y=perm.clone(),
                query_mask=query_mask)


class DictionaryLookup:
    r"""The DictionaryLookup graphs of size ``k``, split into train and test.

    From `"How Attentive are Graph Attention Networks?"
    <https://arxiv.org/abs/2105.14491>`_ (Section 4.1). Each graph encodes a
    permutation ``perm`` of ``0..k-1`` (see :func:`dictionary_lookup_graph`).
    When :math:`k!` is at most ``max_graphs`` all permutations are used,
    else ``max_graphs`` distinct ones drawn at random.

    In the paper's task the values of a graph are a permutation, so a query
    can be answered without finding its key: the one value that the other
    keys do not hold is the answer. With ``values='with_replacement'`` the
    values of a graph are ``k`` independent draws from ``0..k-1`` instead
    (all :math:`k^k` rows when that is at most ``max_graphs``, else
    ``max_graphs`` distinct ones drawn at random), so the other keys' values
    say nothing about a query's answer and only the lookup solves the task.

    The split follows the authors' code: a random set of
    :math:`\lfloor \texttt{train\_fraction}^{1/k} \cdot k^2 \rfloor` of the
    :math:`k^2` (key, value) pairs is allowed in training; a graph goes to the
    training set when all its pairs are allowed, else to the test set. Every
    test graph thus holds at least one pair that no training graph holds, and
    about ``train_fraction`` of the graphs land in training.

    Everything is drawn from a generator seeded with ``seed``, so the same
    arguments give the same graphs and the same split. The graphs share one
    ``edge_index`` and one ``query_mask`` tensor, which are the same for all
    of them; change them out of place.

    Args:
        k (int): Number of keys (and of queries) per graph, at least 2.
        train_fraction (float, optional): Target fraction of graphs in
            training, in ``(0, 1)``. (default: :obj:`0.8`)
        max_graphs (int, optional): Bound on the number of graphs; above it,
            a random sample of that size replaces the :math:`k!`
            permutations. (default: :obj:`32000`)
        seed (int, optional): Seed of the sample and of the split.
            (default: :obj:`0`)
        values (str, optional): ``'permutation'`` (the paper's task) or
            ``'with_replacement'``. (default: :obj:`'permutation'`)

    Attributes:
        permutations (torch.Tensor): ``[num_graphs, k]``, one row per graph:
            the value of each key (a permutation of ``0..k-1`` unless
            ``values='with_replacement'``).
        train_mask (torch.Tensor): ``[num_graphs]``, bool, true for training
            graphs.
        unseen_pairs (torch.Tensor): ``[num_pairs, 2]``, the (key, value)
            pairs never seen in training.
        train_dataset (list[Data]): The training graphs.
        test_dataset (list[Data]): The test graphs.
    """
    def __init__(self, k: int, train_fraction: float = 0.8,
                 max_graphs: int = 32_000, seed: int = 0,
                 values: str = 'permutation') -> None:
        name = type(self).__name__
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise ValueError(f"'{name}' needs an integer k >= 2 (the number "
                             f'of keys per graph), got {k!r}')
        if not 0.0 < train_fraction < 1.0:
            raise ValueError(f"'{name}' needs 0 < train_fraction < 1, got "
                             f'{train_fraction!r}')
        if (isinstance(max_graphs, bool) or not isinstance(max_graphs, int)
                or max_graphs < 2):
            raise ValueError(f"'{name}' needs an integer max_graphs >= 2, "
                             f'got {max_graphs!r}')
        if values not in VALUES:
            raise ValueError(f"'{name}' got values={values!r}; pass one of "
                             f'{VALUES}')
        self.k = k
        self.train_fraction = train_fraction
        self.max_graphs = max_graphs
        self.seed = seed
        self.values = values

        self._layout = _layout(k)
        generator = torch.Generator().manual_seed(seed)
        self.permutations = self._permutations(generator)
        self.unseen_pairs, self.train_mask = self._split(generator)

        num_train = int(self.train_mask.sum())
        if num_train == 0 or num_train == len(self.train_mask):
            empty = 'training' if num_train == 0 else 'test'
            raise ValueError(
                f"'{name}' with k={k} and train_fraction={train_fraction} "
                f'left the {empty} set empty ({len(self.train_mask)} graphs, '
                f'{len(self.unseen_pairs)} held-out pairs); raise k or move '
                'train_fraction away from 0 and 1')

        self.train_dataset = [
            self[i] for i in self.train_mask.nonzero().view(-1).tolist()
        ]
        self.test_dataset = [
            self[i] for i in (~self.train_mask).nonzero().view(-1).tolist()
        ]

    def _permutations(self, generator: torch.Generator) -> Tensor:
        k = self.k
        repeats = self.values == 'with_replacement'
        if (k**k if repeats else math.factorial(k)) <= self.max_graphs:
            rows = (itertools.product(range(k), repeat=k) if repeats else
                    itertools.permutations(range(k)))
            return torch.tensor(list(rows))
        # Distinct random rows: draw, drop repeats, top up.
        perms = torch.empty(0, k, dtype=torch.long)
        while perms.size(0) < self.max_graphs:
            need = self.max_graphs - perms.size(0)
            if repeats:
                new = torch.randint(k, (need, k), generator=generator)
            else:
                new = torch.rand(need, k, generator=generator).argsort(dim=1)
            perms = _unique_rows_in_order(torch.cat([perms, new], dim=0))
        return perms

    def _split(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        k = self.k
        per_position = self.train_fraction**(1.0 / k)
        num_allowed = int(per_position * k * k)
        held_out = torch.randperm(k * k, generator=generator)[num_allowed:]
        held_out = held_out.sort().values
        unseen_pairs = torch.stack([held_out // k, held_out % k], dim=1)
        allowed = torch.ones(k, k, dtype=torch.bool)
        allowed[unseen_pairs[:, 0], unseen_pairs[:, 1]] = False
        keys = torch.arange(k).expand_as(self.permutations)
        train_mask = allowed[keys, self.permutations].all(dim=1)
        return unseen_pairs, train_mask

    @property
    def train_permutations(self) -> Tensor:
        """``[num_train, k]``: the permutations of the training graphs, in
        the order of :obj:`train_dataset`."""
        return self.permutations[self.train_mask]

    @property
    def test_permutations(self) -> Tensor:
        """``[num_test, k]``: the permutations of the test graphs, in the
        order of :obj:`test_dataset`."""
        return self.permutations[~self.train_mask]

    @property
    def num_embeddings(self) -> int:
        """Number of distinct ids, ``k`` keys or values plus the empty id."""
        return self.k + 1

    @property
    def num_classes(self) -> int:
        """Number of possible targets (values) of a query node."""
        return self.k

    @property
    def empty_id(self) -> int:
        """The value id carried by query nodes."""
        return self.k

    def __len__(self) -> int:
        return self.permutations.size(0)

    def __getitem__(self, idx: int) -> Data:
        return _graph(self.permutations[idx], *self._layout)

    def __repr__(self) -> str:
        values = ('' if self.values == 'permutation' else
                  f", values='{self.values}'")
        return (f'{type(self).__name__}(k={self.k}, '
                f'train={len(self.train_dataset)}, '
                f'test={len(self.test_dataset)}{values})')


def _unique_rows_in_order(rows: Tensor) -> Tensor:
    """Rows of ``rows`` without repeats, each kept at its first position."""
    _, inverse = torch.unique(rows, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1, ), rows.size(0))
    first.scatter_reduce_(0, inverse, torch.arange(rows.size(0)), 'amin')
    return rows[first.sort().values]
