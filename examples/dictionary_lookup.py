"""GAT against GATv2 on DictionaryLookup (Sec. 4.1 of the GATv2 paper).

Each graph holds k (key, value) nodes and k query nodes; every query must
find the node with its key and answer that node's value. GAT's attention is
static (every query ranks the keys the same way), so it cannot; GATv2's is
dynamic. Both networks are the authors' (embeddings, one attention layer,
a linear readout) and train with their recipe on the same graphs and seed,
until the training numbers stop improving: a higher training accuracy, or
the same with a lower training loss (the authors stop on test accuracy).

    python examples/dictionary_lookup.py --k 5
"""
import argparse

import torch

from pyg_gatv2.experiments import DictionaryLookup, DictionaryLookupNet
from pyg_gatv2.experiments.lookup import LookupRecipe, train_lookup

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument('--k', type=int, default=10, help='keys per graph')
parser.add_argument('--heads', type=int, default=1)
parser.add_argument('--max-epochs', type=int, default=50_000)
parser.add_argument('--seed', type=int, default=0)
args = parser.parse_args()

dataset = DictionaryLookup(args.k, seed=args.seed)
print(f'{dataset}: {len(dataset.unseen_pairs)} (key, value) pairs appear '
      'only in test graphs')


def show(entry: dict) -> None:
    print(f"Epoch: {entry['epoch']:03d}, Loss: {entry['loss']:.4f}, "
          f"LR: {entry['lr']:.2g}, Train loss: {entry['train_loss']:.4f}, "
          f"Train: {entry['train_node_acc']:.4f}, "
          f"Test: {entry['test_node_acc']:.4f}")


for conv in ['gat', 'gatv2']:
    torch.manual_seed(args.seed)
    model = DictionaryLookupNet(args.k, heads=args.heads, conv=conv)
    print(f'\n{model}')
    result = train_lookup(model, dataset,
                          LookupRecipe(max_epochs=args.max_epochs),
                          seed=args.seed, on_eval=show, progress=False)
    print(f'{conv}: train {result.train_node_acc:.4f} per node, '
          f'{result.train_graph_acc:.4f} per graph; test '
          f'{result.test_node_acc:.4f} per node, '
          f'{result.test_graph_acc:.4f} per graph (best of {result.epochs} '
          f'epochs, stop: {result.stop}, {result.seconds:.0f} s)')
    print('attention of each query (row) over the keys (columns) on one '
          'test graph; the right key is on the diagonal:')
    for row in torch.tensor(result.attention).mean(dim=0):
        print('  ' + ' '.join(f'{a:.2f}' for a in row.tolist()))
