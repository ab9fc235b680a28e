"""benchmarks/vs_turbo_gnn.py on the CPU: turbo-gnn's CUDA kernels cannot
run here, so a module with its operator's interface (computed edge by edge
in PyTorch, from turbo-gnn's docstring) stands in for it, to test what the
script does with it: which features go where, the check that refuses a
wrong operator, the table, and the rows of a missing package."""
import sys
import textwrap
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / 'benchmarks'
sys.path.insert(0, str(BENCHMARKS))
import vs_turbo_gnn  # noqa: E402
from _common import read_csv  # noqa: E402

# turbo_gnn.gatv2_aggr(graph, x, x_neighbors, attention_weights,
# negative_slope): x the destinations' features, x_neighbors the sources',
# out [N, H * D]. SWAP_ROLES makes it take them the other way round.
STAND_IN = '''
import torch
import torch.nn.functional as F
from torch_geometric.utils import softmax

__version__ = 'stand-in'
SWAP_ROLES = False


class AdjacencyForwardBackwardWithNodeBuckets:
    def __init__(self, edge_index, num_nodes):
        self.edge_index, self.num_nodes = edge_index, num_nodes

    @classmethod
    def from_edge_list(cls, edge_index, num_nodes):
        return cls(edge_index, num_nodes)

    def to(self, device):
        return AdjacencyForwardBackwardWithNodeBuckets(
            self.edge_index.to(device), self.num_nodes)


def gatv2_aggr(graph, x, x_neighbors, attention_weights,
               negative_slope=0.2, autotune=False):
    if SWAP_ROLES:
        x, x_neighbors = x_neighbors, x
    src, dst = graph.edge_index
    logit = (F.leaky_relu(x[dst] + x_neighbors[src], negative_slope)
             * attention_weights).sum(-1)
    alpha = softmax(logit, dst, num_nodes=graph.num_nodes)
    out = torch.zeros_like(x).index_add(
        0, dst, alpha.unsqueeze(-1) * x_neighbors[src])
    return out.view(x.size(0), -1)
'''

SMALL = ['--device', 'cpu', '--nodes', '300', '--degree', '5', '--heads',
         '2', '--channels', '8', '--repeats', '2']


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    folder = tmp_path / 'stand_in'
    (folder / 'turbo_gnn').mkdir(parents=True)
    (folder / 'turbo_gnn' / '__init__.py').write_text(
        textwrap.dedent(STAND_IN))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, 'turbo_gnn', raising=False)
    import turbo_gnn
    return turbo_gnn


@pytest.mark.parametrize('graph', ['uniform', 'powerlaw'])
def test_an_operator_of_the_same_maths_passes_and_is_timed(
        stand_in, tmp_path, graph):
    vs_turbo_gnn.main([*SMALL, '--graph', graph, '--out', str(tmp_path)])
    rows = {row['impl']: row for row in
            read_csv(tmp_path / 'vs_turbo_gnn.csv')}
    assert list(rows) == list(vs_turbo_gnn.IMPLS)
    for impl in ('turbo', 'turbo_autotune'):
        row = rows[impl]
        assert row['status'] == 'ok', row
        assert float(row['max_rel_error'].split()[0]) <= 1e-4
        assert row['step_vs_ours'].endswith('x')
    assert rows['ours']['step_vs_ours'] == '1.00x'
    for row in rows.values():
        assert float(row['fwd_ms']) > 0 and float(row['step_ms']) > 0
    markdown = (tmp_path / 'vs_turbo_gnn.md').read_text()
    assert 'turbo-gnn stand-in' in markdown
    # 300 nodes of 5 edges each, less those i -> i, and 300 loops.
    assert f'{graph} graph of 300 nodes and ' in markdown


def test_features_in_the_wrong_roles_are_refused(stand_in, tmp_path):
    stand_in.SWAP_ROLES = True
    vs_turbo_gnn.main([*SMALL, '--impls', 'ours,turbo', '--out',
                       str(tmp_path)])
    rows = read_csv(tmp_path / 'vs_turbo_gnn.csv')
    assert rows[1]['status'].startswith('MISMATCH'), rows[1]
    assert 'step_ms' not in rows[1]
    assert float(rows[0]['step_ms']) > 0


def test_without_turbo_gnn_its_rows_say_so(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'turbo_gnn', None)
    vs_turbo_gnn.main([*SMALL, '--out', str(tmp_path)])
    rows = read_csv(tmp_path / 'vs_turbo_gnn.csv')
    assert [row['status'] for row in rows][0] == 'ok'
    for row in rows[1:]:
        assert row['status'].startswith('n/a (turbo-gnn not installed')
    assert 'turbo-gnn not installed' in (
        tmp_path / 'vs_turbo_gnn.md').read_text()


def test_ours_is_always_run(capsys):
    with pytest.raises(SystemExit):
        vs_turbo_gnn.parse_args(['--impls', 'turbo'])
    assert 'ours among them' in capsys.readouterr().err
