import json

import numpy as np
import pytest

from pyg_gatv2.experiments.training import SeedResult, TrainResult


def test_summary_over_seeds():
    runs = [SeedResult(seed=s, best_epoch=10, val_acc=0.8, val_loss=0.5,
                       test_acc=acc, epochs=20, seconds=1.0,
                       history={'epoch': [1]})
            for s, acc in enumerate([0.80, 0.83, 0.86])]
    result = TrainResult(runs)
    assert result.test_acc_mean == pytest.approx(0.83)
    assert result.test_acc_std == pytest.approx(np.std([0.80, 0.83, 0.86]))
    summary = json.loads(json.dumps(result.to_dict()))['summary']
    assert summary['num_seeds'] == 3 and summary['seeds'] == [0, 1, 2]
    assert summary['test_acc_std'] == pytest.approx(result.test_acc_std)
