"""sweeps.trainable: what a trial reports besides the trainer's metrics."""

from __future__ import annotations

import math
from pathlib import Path

from emovae.checkpoint import FORMAT_VERSION, save_checkpoint
from sweeps.trainable import emotion_metrics_due, objective_tracker
from sweeps.trials import best_key


def test_the_running_best_ignores_an_epoch_that_spikes():
    best = objective_tracker({"metric": "val_recon", "mode": "min"}, None)
    reported = [best({"val_recon": v})[best_key("val_recon")] for v in (1.0, 0.8, 2.5, 0.6)]
    assert reported == [1.0, 0.8, 0.8, 0.6]


def test_a_maximised_metric_keeps_its_highest_and_waits_for_a_finite_value():
    best = objective_tracker({"metric": "val_emotion_acc_recon", "mode": "max"}, None)
    first = best({"val_emotion_acc_recon": math.nan})["best_val_emotion_acc_recon"]
    assert math.isnan(first)  # silhouette-like metrics can be undefined on an epoch
    assert best({"val_emotion_acc_recon": 0.4}) == {"best_val_emotion_acc_recon": 0.4}
    assert best({"val_emotion_acc_recon": 0.3}) == {"best_val_emotion_acc_recon": 0.4}


def test_a_resumed_trial_starts_from_the_best_in_its_checkpoint(tmp_path: Path):
    last = tmp_path / "last.pt"
    history = [{"epoch": 1.0, "val_recon": 0.9}, {"epoch": 2.0, "val_recon": 0.7}]
    save_checkpoint(last, {"format_version": FORMAT_VERSION, "history": history})
    best = objective_tracker({"metric": "val_recon", "mode": "min"}, last)
    assert best({"val_recon": 0.75}) == {"best_val_recon": 0.7}


def test_without_an_objective_nothing_is_added():
    assert objective_tracker(None, None)({"val_recon": 1.0}) == {}


def test_emotion_metrics_are_due_every_k_epochs_and_on_the_last():
    """The cadence the trials follow (and the end-to-end sweep test checks Tune's results
    against): every 3rd epoch and the last one (the first epoch is the callback's own rule)."""
    due = [emotion_metrics_due(epoch, 3, is_last_epoch=epoch == 7) for epoch in range(1, 8)]
    assert due == [False, False, True, False, False, True, True]
    assert [emotion_metrics_due(epoch, 1, False) for epoch in range(1, 4)] == [True] * 3
