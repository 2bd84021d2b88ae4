"""sweeps.checkpoint_pruner on a real Tune experiment: it deletes only checkpoints older than
the one the saved experiment state restores each trial from (the SIGKILL test in
test_sweep_e2e.py shows why Tune's own retention cannot be used)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from ray import tune

from sweeps import checkpoint_pruner
from sweeps.checkpoint_pruner import CheckpointPruner, prune_superseded_checkpoints

REPORTS = 6


def _reporting_trial(config: dict) -> None:
    import tempfile

    for step in range(REPORTS):
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "step.txt").write_text(str(step))
            tune.report({"step": step, "x": config["x"]}, checkpoint=tune.Checkpoint(folder))


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A finished two-trial Tune experiment that checkpointed at every report, run with the
    pruner and no `num_to_keep`, as the sweep's Tuner is."""
    storage = tmp_path_factory.mktemp("tune")
    ray.init(
        num_cpus=1,
        include_dashboard=False,
        configure_logging=False,
        # The trial function lives in this module: its worker imports it from here.
        runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).parent)}},
    )
    try:
        tune.Tuner(
            _reporting_trial,
            param_space={"x": tune.grid_search([1, 2])},
            run_config=tune.RunConfig(
                name="pruned", storage_path=str(storage), callbacks=[CheckpointPruner()], verbose=0
            ),
        ).fit()
    finally:
        ray.shutdown()
    yield storage / "pruned"


def _checkpoints(trial_dir: Path) -> list[str]:
    return sorted(p.name for p in trial_dir.glob("checkpoint_*"))


def test_after_the_sweep_each_trial_keeps_only_the_checkpoint_it_would_restore_from(
    experiment: Path,
) -> None:
    trial_dirs = [p for p in experiment.iterdir() if p.is_dir()]
    assert len(trial_dirs) == 2, trial_dirs
    for trial_dir in trial_dirs:
        assert _checkpoints(trial_dir) == [f"checkpoint_{REPORTS - 1:06d}"]
        assert (trial_dir / _checkpoints(trial_dir)[0] / "step.txt").read_text() == "5"
    assert tune.Tuner.can_restore(str(experiment))


def test_older_checkpoints_go_newer_ones_stay(experiment: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(experiment, copy)
    trial_dir = next(p for p in copy.iterdir() if p.is_dir())
    # An older one the snapshot no longer points at; a newer one it does not know yet (a
    # trial's checkpoint written after Tune's last snapshot: a resume may still need it).
    (trial_dir / "checkpoint_000002").mkdir()
    (trial_dir / "checkpoint_000009").mkdir()
    assert prune_superseded_checkpoints(copy) == 1
    assert _checkpoints(trial_dir) == ["checkpoint_000005", "checkpoint_000009"]


def test_without_a_readable_snapshot_nothing_is_deleted(experiment: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(experiment, copy)
    trial_dir = next(p for p in copy.iterdir() if p.is_dir())
    (trial_dir / "checkpoint_000001").mkdir()
    for snapshot in copy.glob("experiment_state-*.json"):
        snapshot.write_text('{"trial_data": [')  # being replaced
    assert prune_superseded_checkpoints(copy) == 0
    for snapshot in copy.glob("experiment_state-*.json"):
        snapshot.unlink()
    assert prune_superseded_checkpoints(copy) == 0
    assert "checkpoint_000001" in _checkpoints(trial_dir)


def test_a_slow_prune_stretches_the_period_to_its_share_of_the_driver(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [0.0]
    pruned_at: list[float] = []

    def slow_prune(trials: list) -> None:  # a sweep so large that one read takes 2 s
        pruned_at.append(clock[0])
        clock[0] += 2.0

    monkeypatch.setattr(checkpoint_pruner, "_prune", slow_prune)
    pruner = CheckpointPruner(every_s=10.0, clock=lambda: clock[0])
    while clock[0] < 200.0:
        pruner.on_step_end(0, trials=["trial"])
        clock[0] += 1.0  # one loop step of Tune
    # Each 2 s prune is followed by 40 s without one (the 5 % share), not by 10 s (20 %).
    assert checkpoint_pruner.MAX_DRIVER_SHARE == 0.05
    assert pruned_at == [0.0, 42.0, 84.0, 126.0, 168.0]


def test_a_fast_prune_keeps_the_period(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    pruned_at: list[float] = []
    monkeypatch.setattr(checkpoint_pruner, "_prune", lambda trials: pruned_at.append(clock[0]))
    pruner = CheckpointPruner(every_s=10.0, clock=lambda: clock[0])
    while clock[0] < 60.0:
        pruner.on_step_end(0, trials=["trial"])
        clock[0] += 1.0
    assert pruned_at == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]
