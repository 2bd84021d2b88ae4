"""sweeps.results: trial status and error text as the sweep reports them."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from sweeps.results import trial_error_text, trial_status


def _trial(
    status: str, path: Path | None, error_file: str | None = None, stored: str | None = None
):
    return SimpleNamespace(
        status=status,
        error_file=error_file,
        path=str(path) if path else None,
        get_error=lambda: stored,
    )


def test_status_from_ray_status_and_last_epoch_flag():
    assert trial_status("ERROR", {"is_last_epoch": 1.0}) == "FAILED"
    assert trial_status("TERMINATED", {"is_last_epoch": 1.0}) == "FINISHED"
    assert trial_status("TERMINATED", {"is_last_epoch": 0.0}) == "KILLED_BY_ASHA"
    assert trial_status("TERMINATED", None) == "KILLED_BY_ASHA"
    # Pending or running when the driver stopped: not an ASHA decision.
    for left in ("RUNNING", "PENDING", "PAUSED"):
        assert trial_status(left, {"is_last_epoch": 0.0}) == "INTERRUPTED"


def test_error_text_prefers_the_local_file_then_storage(tmp_path: Path):
    local = tmp_path / "local.txt"
    local.write_text("ValueError: local trace\n")
    assert trial_error_text(_trial("ERROR", None, str(local))) == "ValueError: local trace"
    stored = _trial("ERROR", None, stored="RuntimeError: from storage")
    assert trial_error_text(stored) == "RuntimeError: from storage"
    assert trial_error_text(_trial("TERMINATED", None, str(local))) is None


def test_error_text_found_in_the_trial_folder_when_the_trial_does_not_name_it(tmp_path: Path):
    # A failed restore: Tune writes error.txt in the trial folder but records no file name.
    (tmp_path / "error.txt").write_text("ValueError: Could not recover from checkpoint\n")
    text = trial_error_text(_trial("ERROR", tmp_path))
    assert text == "ValueError: Could not recover from checkpoint"
    assert trial_error_text(_trial("ERROR", tmp_path / "gone")) == (
        "trial raised an error (no trace saved)"
    )
