import pytest

from pyg_gatv2.experiments.training import EarlyStopping

# (val_loss, val_acc) per epoch, then per criterion with patience 2: the best
# epoch and the epoch at which training stops.
VALIDATION = [(1.00, 0.50), (0.90, 0.48), (0.95, 0.52), (0.92, 0.52),
              (0.97, 0.51), (0.98, 0.50), (0.99, 0.49)]


@pytest.mark.parametrize('criterion,best,stop', [
    ('loss+acc', 1, 6),  # epochs 2-4 restart the count, none improves both
    ('loss', 2, 4),
    ('acc', 4, 6),  # epoch 4 ties the accuracy of epoch 3 at a lower loss
])
def test_early_stopping(criterion, best, stop):
    stopper = EarlyStopping(patience=2, criterion=criterion)
    bests = []
    for epoch, (loss, acc) in enumerate(VALIDATION, start=1):
        if stopper.step(epoch, loss, acc):
            bests.append(epoch)
        if stopper.should_stop:
            break
    assert epoch == stop
    assert stopper.best_epoch == bests[-1] == best

    copy = EarlyStopping(patience=2, criterion=criterion)
    copy.load_state_dict(stopper.state_dict())
    assert copy.state_dict() == stopper.state_dict()


@pytest.mark.parametrize('kwargs,match', [
    ({'patience': 0}, 'patience to be a positive integer, got 0'),
    ({'criterion': 'val_acc'}, "got criterion='val_acc'; choose one of"),
])
def test_early_stopping_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=f"'EarlyStopping' .*{match}"):
        EarlyStopping(**kwargs)
