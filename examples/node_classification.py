"""Node classification on Cora with a two-layer GATv2.

The GAT paper's transductive recipe: 8 heads of 8 hidden features, one
averaged output head, dropout 0.6 on features and attention, Adam with
learning rate 0.005 and weight decay 5e-4, early stopping with patience 100,
and the test accuracy read at the best validation epoch.

    python examples/node_classification.py

Cora's raw files are taken from $PYG_GATV2_RAW_DIR when it is set, else
downloaded once into $PYG_GATV2_ROOT (default $XDG_CACHE_HOME/pyg_gatv2,
else ~/.cache/pyg_gatv2). For
several seeds, results files and curves, use ``pyg-gatv2 train``.
"""
from pyg_gatv2 import GATv2
from pyg_gatv2.experiments import load_planetoid, train_node_classifier

dataset = load_planetoid('Cora')
data = dataset[0]
print(f'Cora: {data.num_nodes} nodes, {data.num_edges} edges, '
      f'{dataset.num_features} features, {dataset.num_classes} classes')


def build_model():
    return GATv2(dataset.num_features, dataset.num_classes)


def print_epoch(seed, m):
    print(f'Epoch: {m.epoch:03d}, Loss: {m.loss:.4f}, Train: '
          f'{m.train_acc:.4f}, Val: {m.val_acc:.4f}, Test: {m.test_acc:.4f}')


result = train_node_classifier(build_model, data, seeds=[0],
                               on_epoch=print_epoch)
run = result.runs[0]
print(f'Stopped after {run.epochs} epochs; best validation epoch '
      f'{run.best_epoch} (val accuracy {run.val_acc:.4f})')
print(f'Test accuracy: {run.test_acc:.4f}')
