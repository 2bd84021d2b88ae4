"""The Pareto front and its knee, from trial records (sweeps.pareto)."""

from __future__ import annotations

from sweeps.pareto import dominates, knee, objective_vector, pareto_front
from sweeps.trials import TrialRecord, TrialStatus

METRICS, MODES = ("val_recon", "val_gen_emotion_acc"), ("min", "max")


def _record(trial_id: str, rows: list[tuple[float, float]], status=TrialStatus.FINISHED):
    history = [
        {"epoch": i + 1, "val_recon": recon, "val_gen_emotion_acc": acc}
        for i, (recon, acc) in enumerate(rows)
    ]
    return TrialRecord(trial_id, {}, status, history)


def test_the_vector_is_read_at_the_first_objectives_best_epoch() -> None:
    # Best val_recon at epoch 2: the accuracy of epoch 2, not the best accuracy (epoch 3).
    record = _record("a", [(0.9, 0.2), (0.5, 0.4), (0.7, 0.9)])
    assert objective_vector(record, METRICS, MODES) == (0.5, 0.4)
    missing = TrialRecord("b", {}, TrialStatus.FINISHED, [{"epoch": 1, "val_recon": 0.5}])
    assert objective_vector(missing, METRICS, MODES) is None


def test_dominance_respects_each_direction() -> None:
    assert dominates((0.4, 0.6), (0.5, 0.6), MODES)
    assert not dominates((0.4, 0.5), (0.5, 0.6), MODES)  # a trade-off
    assert not dominates((0.5, 0.6), (0.5, 0.6), MODES)  # equal: neither


def test_front_leaves_out_dominated_and_failed_trials_and_the_knee_balances() -> None:
    records = [
        _record("low_recon", [(0.30, 0.20)]),
        _record("balanced", [(0.40, 0.70)]),
        _record("high_acc", [(0.90, 0.80)]),
        _record("dominated", [(0.50, 0.60)]),
        _record("failed", [(0.10, 0.99)], TrialStatus.FAILED),
    ]
    front = pareto_front(records, METRICS, MODES)
    assert [record.trial_id for record, _ in front] == ["low_recon", "balanced", "high_acc"]
    assert knee(front, MODES).trial_id == "balanced"
    assert knee([], MODES) is None
