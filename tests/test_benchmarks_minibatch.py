"""benchmarks/minibatch.py: its synthetic graph, its flags, its check of a
training step of our model against PyG's, its rows and a --quick run end
to end under torchrun (no timing asserted)."""
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch_geometric.utils import contains_self_loops, homophily, is_undirected

BENCHMARKS = Path(__file__).resolve().parents[1] / 'benchmarks'
sys.path.insert(0, str(BENCHMARKS))
import minibatch  # noqa: E402
from _common import read_csv  # noqa: E402

GRAPH = dict(nodes=4000, degree=10, classes=5, features=40, words=6,
             homophily=0.8, topic=0.5, train_fraction=0.25, seed=3)


def test_synthetic_graph_is_seeded_and_shaped_as_asked():
    data = minibatch.synthetic_graph(**GRAPH)
    again = minibatch.synthetic_graph(**GRAPH)
    for key in ('x', 'y', 'edge_index', 'train_idx'):
        assert torch.equal(data[key], again[key])
    other = minibatch.synthetic_graph(**dict(GRAPH, seed=4))
    assert not torch.equal(data.edge_index, other.edge_index)

    assert data.num_nodes == 4000
    assert is_undirected(data.edge_index)
    assert not contains_self_loops(data.edge_index)
    # About degree x nodes directed edges, fewer by the duplicates dropped.
    assert 0.95 * 40_000 < data.num_edges <= 40_000
    # 80% of the partners come from the own block, and a fifth of the
    # uniform rest lands there too: 0.8 + 0.2 / 5 = 0.84.
    assert homophily(data.edge_index, data.y) == pytest.approx(0.84,
                                                               abs=0.02)
    assert torch.bincount(data.y).tolist() == [800] * 5
    # Bags of words: at most 6 ones per row, scaled to sum to one.
    assert torch.allclose(data.x.sum(1), torch.ones(4000))
    assert ((data.x > 0).sum(1) <= 6).all()
    # Half the words come from the class topic: columns = class mod 5.
    words = data.x.nonzero()
    on_topic = (words[:, 1] % 5 == data.y[words[:, 0]]).float().mean()
    assert on_topic > 0.5
    assert data.train_idx.unique().numel() == 1000


@pytest.mark.parametrize('argv, message', [
    (['--threads', '3'], 'must divide evenly'),
    (['--homophily', '1.5'], '--homophily must lie in'),
    (['--nodes', '1000'], 'less than one batch'),
    (['--classes', '200'], '--classes must not exceed --features'),
    (['--procs', '0'], 'positive integers'),
    (['--device', 'cuda', '--procs', '64'], 'needs as many GPUs'),
])
def test_bad_flags_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        minibatch.parse_args(argv)
    assert message in capsys.readouterr().err


def test_process_counts_and_name_follow_the_device(monkeypatch):
    assert minibatch.parse_args([]).procs == [1, 2]
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    args = minibatch.parse_args(['--device', 'cuda', '--quick'])
    assert (args.procs, args.name) == ([1], 'minibatch_cuda_quick')
    assert minibatch.parse_args(['--device', 'cuda', '--procs', '1',
                                 '2']).procs == [1, 2]


def test_quick_flags_give_way_to_explicit_ones():
    args = minibatch.parse_args(['--quick', '--steps', '7'])
    assert args.steps == 7 and args.nodes == minibatch.QUICK['nodes']
    assert args.name == 'minibatch_quick'


def test_check_steps_both_models_without_dropout():
    spec = dict(features=GRAPH['features'], classes=GRAPH['classes'],
                hidden=4, heads=2, dropout=0.6, seed=0)
    data = minibatch.synthetic_graph(**dict(GRAPH, nodes=200))
    models = {name: minibatch.build_model(name, spec)
              for name in minibatch.LAYERS}
    check = minibatch.agreement(models, data, {})
    # Dropout 0.6 in training, off for the check.
    assert check['status'] == 'ok', check
    assert check['max_rel_error'] <= minibatch.TOLERANCE
    assert check['grad_max_rel_error'] <= minibatch.TOLERANCE
    assert check['worst_grad'].startswith('convs.')
    assert all(model.training for model in models.values())
    assert all(p.grad is None for model in models.values()
               for p in model.parameters())
    # Forward untouched, the gradient of one parameter 1% off.
    models['ours'].convs[0].att.register_hook(lambda grad: grad * 1.01)
    check = minibatch.agreement(models, data, {})
    assert check['status'].startswith('MISMATCH (convs.0.att: ')
    assert check['worst_grad'] == 'convs.0.att'


CHECKED = dict(status='ok', max_rel_error=1e-7, grad_max_rel_error=2e-7,
               worst_grad='convs.0.att')


def parts(attention, other):
    return dict(attention=attention, layout=0.001, projections=0.002,
                dropout_draws=0.003, input_dropout=0.004, other=other)


def rank_result(sampling, ours, pyg, peak_ours, peak_pyg, check=CHECKED,
                rates=(4.0, 1.0), all_threads=(2.0, 1.5)):
    return dict(medians=dict(sampling=sampling, ours=ours, pyg=pyg),
                parts=dict(ours=parts(0.5, ours - 0.5), pyg=parts(0.0, pyg)),
                steps_per_s=dict(ours=rates[0], pyg=rates[1]),
                steps_per_s_all_threads=dict(ours=all_threads[0],
                                             pyg=all_threads[1]),
                split_threads=1, device='cpu',
                check=check, status=dict(ours='ok', pyg='ok'),
                edges=100.0, nodes=90.0, steps_per_epoch=10,
                peak=dict(ours=peak_ours, pyg=peak_pyg),
                kept=dict(ours=peak_ours / 2, pyg=0.0))


def test_summarize_takes_the_slowest_rank_and_the_median_run():
    mib = minibatch.MiB
    runs = [[rank_result(0.1, 1.0, 3.0, 2 * mib, 8 * mib),
             rank_result(0.2, 2.0, 4.0, 4 * mib, 6 * mib, rates=(3.0, 2.0))],
            [rank_result(0.1, 9.0, 9.0, 0, 0, rates=(9.0, 9.0)),
             rank_result(0.1, 9.0, 9.0, 0, 0, rates=(8.0, 9.0))],
            [rank_result(0.3, 1.0, 2.0, 0, 0, rates=(1.0, 0.5)),
             rank_result(0.1, 1.0, 2.0, 0, 0)]]
    ours, pyg = minibatch.summarize(2, 1, runs, batch_size=50)
    # Slowest ranks: sampling 0.2, 0.1, 0.3 -> 0.2; ours 2, 9, 1 -> 2;
    # PyG 4, 9, 2 -> 4. Memory from the first run, the largest rank.
    assert ours['sampling_ms'] == pyg['sampling_ms'] == '200.0'
    assert (ours['sampled_nodes'], ours['sampled_edges']) == ('90', '100')
    assert ours['device'] == pyg['device'] == 'cpu'
    assert (ours['model_ms'], pyg['model_ms']) == ('2000.0', '4000.0')
    assert ours['model_s_per_epoch'] == '20.000'
    assert ours['s_per_epoch'] == '22.000'
    assert ours['seeds_per_s'] == f'{2 * 50 / 2.2:.0f}'
    assert (ours['model_speedup'], pyg['model_speedup']) == ('2.00', '1.00')
    assert (ours['peak_mib'], pyg['peak_mib']) == ('4.0', '8.0')
    assert (ours['kept_mib'], pyg['kept_mib']) == ('2.0', '0.0')
    assert (ours['memory_ratio'], pyg['memory_ratio']) == ('0.500', '1.000')
    # End to end, the slowest rank's rate: ours 3, 8, 1 -> 3 steps/s;
    # PyG 1, 9, 0.5 -> 1.
    assert ours['overlapped_seeds_per_s'] == f'{2 * 50 * 3.0:.0f}'
    assert pyg['overlapped_seeds_per_s'] == f'{2 * 50 * 1.0:.0f}'
    assert (ours['overlapped_speedup'], pyg['overlapped_speedup']) == (
        '3.00', '1.00')
    assert ours['overlapped_threads'] == 1
    # On all threads every rank ran at 2 (ours) and 1.5 (PyG) steps/s: the
    # better setting is the split for ours and all threads for PyG.
    assert ours['all_threads_seeds_per_s'] == f'{2 * 50 * 2.0:.0f}'
    assert pyg['all_threads_seeds_per_s'] == f'{2 * 50 * 1.5:.0f}'
    assert (ours['best_vs_best'], pyg['best_vs_best']) == ('2.00', '1.00')
    # The parts from the first run, the slowest rank.
    assert (ours['attention_ms'], ours['other_ms']) == ('500.0', '1500.0')
    assert (pyg['attention_ms'], pyg['other_ms']) == ('0.0', '4000.0')
    assert ours['dropout_draws_ms'] == '3.0'
    # The attention's share of the slowest rank's parts: (0.5 + 0.001) /
    # 2.01; PyG's 4 s over ours without it.
    assert ours['attention_share'] == '0.249'
    assert ours['attention_free_speedup'] == (
        f'{4.0 / (2.0 * 1.509 / 2.01):.2f}')
    assert 'attention_share' not in pyg
    assert (ours['status'], ours['max_rel_error']) == ('ok', '1.0e-07')
    assert 'max_rel_error' not in pyg  # the reference


def test_summarize_gives_a_model_that_failed_its_check_no_numbers():
    failed = dict(status='MISMATCH (convs.0.att: 1.0e-02)',
                  max_rel_error=0.0, grad_max_rel_error=1e-2,
                  worst_grad='convs.0.att')
    rank = rank_result(0.1, 1.0, 2.0, 1.0, 2.0, check=failed)
    # As train_rank leaves it: ours neither timed nor measured.
    rank['status']['ours'] = failed['status']
    for key in ('medians', 'peak', 'kept', 'parts', 'steps_per_s',
                'steps_per_s_all_threads'):
        del rank[key]['ours']
    ours, pyg = minibatch.summarize(1, 2, [[rank]], batch_size=8)
    assert ours['status'] == failed['status']
    assert (ours['grad_max_rel_error'], ours['worst_grad']) == (
        '1.0e-02', 'convs.0.att')
    assert not {'model_ms', 's_per_epoch', 'model_speedup', 'memory_ratio',
                'peak_mib', 'overlapped_seeds_per_s',
                'attention_ms'} & set(ours)
    assert pyg['status'] == 'ok' and pyg['model_speedup'] == '1.00'


def test_summarize_without_a_pyg_peak_gives_no_ratio():
    rows = minibatch.summarize(1, 2, [[rank_result(0.1, 1.0, 2.0, 0, 0)]],
                               batch_size=8)
    assert [row['memory_ratio'] for row in rows] == ['n/a', 'n/a']


@pytest.mark.slow  # seven Python processes: about 30 s on a quiet machine
def test_quick_run_reports_both_layers_for_one_and_two_processes(tmp_path):
    pytest.importorskip(
        'torch_sparse', reason='NeighborLoader needs torch-sparse; install '
        "it with pip install 'pyg-gatv2[sampling]'")
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / 'minibatch.py'), '--quick',
         '--out', str(tmp_path)], capture_output=True, text=True,
        timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = read_csv(tmp_path / 'minibatch_quick.csv')
    ours, pyg = minibatch.LAYERS['ours'], minibatch.LAYERS['pyg']
    assert [(r['processes'], r['threads_per_rank'], r['layer'])
            for r in rows] == [('1', '2', ours), ('1', '2', pyg),
                               ('2', '1', ours), ('2', '1', pyg)]
    for row in rows:
        for key in ('sampling_ms', 'model_ms', 's_per_epoch',
                    'model_s_per_epoch', 'seeds_per_s', 'sampled_nodes',
                    'sampled_edges', 'overlapped_seeds_per_s',
                    'all_threads_seeds_per_s', 'best_vs_best',
                    'projections_ms', 'input_dropout_ms', 'other_ms'):
            assert float(row[key]) > 0, (key, row)
        assert (row['status'], row['device']) == ('ok', 'cpu')
        peak = float(row['peak_mib'])
        assert math.isfinite(peak) and peak >= 0
        assert row['memory_ratio'] == 'n/a' or float(
            row['memory_ratio']) >= 0
        if row['layer'] == ours:
            assert float(row['attention_ms']) > 0
            assert 0 < float(row['attention_share']) < 1
            assert float(row['attention_free_speedup']) > float(
                row['model_speedup'])
            assert float(row['max_rel_error']) <= minibatch.TOLERANCE
            assert float(row['grad_max_rel_error']) <= minibatch.TOLERANCE
            assert row['worst_grad'].startswith('convs.')
    for procs in ('1', '2'):
        pyg_row = next(r for r in rows
                       if r['processes'] == procs and r['layer'] == pyg)
        assert float(pyg_row['model_speedup']) == 1.0
    markdown = (tmp_path / 'minibatch_quick.md').read_text()
    assert 'benchmarks/minibatch.py --quick' in markdown
    assert 'Full-batch PyG training step, estimated' in markdown


def profiled_step():
    """The events of one training step of our layer, on a new graph (so
    that the layout is built), under the CPU profiler."""
    from torch.profiler import ProfilerActivity, profile

    from pyg_gatv2 import GATv2Conv
    conv = GATv2Conv(8, 4, heads=2)
    x = torch.randn(50, 8)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        conv(x, torch.randint(0, 50, (2, 200))).sum().backward()
    return prof.events()


def test_split_parts_sums_to_the_total():
    events = profiled_step()
    total = sum(e.self_cpu_time_total for e in events)
    own = minibatch.split_parts(events, 'self_cpu_time_total')
    assert sum(own.values()) == pytest.approx(total)
    assert own['attention'] > 0 and own['layout'] > 0


def test_split_parts_gives_an_inclusive_part_what_no_part_claims():
    # The backward's events nest (the autograd node, the custom op's
    # backward, our backward operator, and the layout by source, built
    # there): the attention takes everything under its outermost events
    # but the layout, which keeps its own.
    events = profiled_step()
    inclusive = minibatch.split_parts(events, 'self_cpu_time_total',
                                      ('attention', ))
    own = minibatch.split_parts(events, 'self_cpu_time_total')
    by_name = {e.name: e for e in events}
    forward = by_name['pyg_gatv2::gatv2_attention']
    backward = by_name[
        'autograd::engine::evaluate_function: '
        'GeneratedBackwardFor_pyg_gatv2_gatv2_attention_defaultBackward']
    layout = by_name['pyg_gatv2::build_layout_by_source']
    assert inclusive['attention'] == pytest.approx(
        forward.cpu_time_total + backward.cpu_time_total
        - layout.cpu_time_total)
    assert inclusive['attention'] > own['attention']
    for part in ('layout', 'projections'):
        assert inclusive[part] == pytest.approx(own[part])
    assert sum(inclusive.values()) == pytest.approx(sum(own.values()))
