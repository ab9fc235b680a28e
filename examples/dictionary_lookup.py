"""GAT against GATv2 on DictionaryLookup (Sec. 4.1 of the GATv2 paper).

Each graph holds k (key, value) nodes and k query nodes; every query must
find the node with its key and answer that node's value. GAT's attention is
static (every query ranks the keys the same way), so it cannot; GATv2's is
dynamic. Both networks get the same data, seed and number of steps.

    python examples/dictionary_lookup.py --k 10 --steps 300
"""
import argparse

import torch

from pyg_gatv2 import DictionaryLookup, DictionaryLookupNet, train_lookup

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument('--k', type=int, default=10, help='keys per graph')
parser.add_argument('--steps', type=int, default=300,
                    help='optimizer steps per network')
parser.add_argument('--batch-size', type=int, default=1024)
parser.add_argument('--lr', type=float, default=0.001)
parser.add_argument('--hidden', type=int, default=128)
parser.add_argument('--heads', type=int, default=1)
parser.add_argument('--dropout', type=float, default=0.5)
parser.add_argument('--seed', type=int, default=0)
args = parser.parse_args()

dataset = DictionaryLookup(args.k, seed=args.seed)
print(f'{dataset}: {len(dataset.unseen_pairs)} (key, value) pairs appear '
      'only in test graphs')

for conv in ['gat', 'gatv2']:
    torch.manual_seed(args.seed)
    model = DictionaryLookupNet(args.k, hidden_channels=args.hidden,
                                heads=args.heads, conv=conv,
                                dropout=args.dropout)
    result = train_lookup(model, dataset, steps=args.steps,
                          batch_size=args.batch_size, lr=args.lr,
                          seed=args.seed, desc=conv)
    print(f'\n{conv}: train {result.train_node_acc:.4f} per node, '
          f'{result.train_graph_acc:.4f} per graph; test '
          f'{result.test_node_acc:.4f} per node, '
          f'{result.test_graph_acc:.4f} per graph '
          f'({result.steps} steps, {result.seconds:.0f} s)')
    print('attention of each query (row) over the keys (columns) on one '
          'test graph; the right key is on the diagonal:')
    for row in torch.tensor(result.attention).mean(dim=0):
        print('  ' + ' '.join(f'{a:.2f}' for a in row.tolist()))
