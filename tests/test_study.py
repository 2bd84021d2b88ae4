"""The sweep's persistent Optuna study (sweeps.study) and warm starts (sweeps.warm_start),
without Ray: the searcher driven through the calls Tune makes, a real journal file and a real
sqlite RDB storage."""

from __future__ import annotations

import pickle
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import requests
from cluster_helpers import free_port
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from emovae.config import ConfigError
from sweeps.space import load_space, to_tune_space
from sweeps.study import (
    ATTR_FORGOTTEN,
    ATTR_RAY_TRIAL,
    ATTR_SEEN,
    ATTR_WARM_START,
    JOURNAL_FILE,
    StudyError,
    StudyLocation,
    SweepSearch,
    check_study,
    claim_study,
    open_storage,
    search_distributions,
)
from sweeps.trials import TrialRecord, TrialStatus
from sweeps.warm_start import WarmStartError, seed_study, warm_start_points

PARAMS = {
    "latent_dim": {"choice": [8, 16]},
    "lr": {"loguniform": [1.0e-4, 1.0e-2]},
    "beta": 1.0e-5,  # a constant: not searched
}


def _searcher(location: StudyLocation, startup: int = 2) -> SweepSearch:
    searcher = SweepSearch(location, optuna.samplers.TPESampler(seed=0, n_startup_trials=startup))
    assert searcher.set_search_properties("objective", "min", to_tune_space(PARAMS))
    return searcher


def _study(location: StudyLocation) -> optuna.Study:
    return optuna.load_study(study_name=location.name, storage=open_storage(location))


def test_searcher_survives_a_restart_from_its_last_snapshot(tmp_path: Path) -> None:
    location = StudyLocation(str(tmp_path / "sweep"), "id-1")
    Path(location.sweep_dir).mkdir()
    _restart_from_snapshot(location, tmp_path)


def test_searcher_survives_a_restart_on_a_postgresql_study(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The study in a team's database (sweep.optuna_storage), password from the environment:
    a restarted driver continues it from the database."""
    secret = make_url(postgres_url).password
    monkeypatch.setenv("OPTUNA_DB_PASSWORD", secret)
    storage = postgres_url.replace(f":{secret}@", ":${OPTUNA_DB_PASSWORD}@")
    location = StudyLocation(str(tmp_path / "sweep"), "id-1", storage)
    _restart_from_snapshot(location, tmp_path)
    assert secret not in location.describe()


def _restart_from_snapshot(location: StudyLocation, tmp_path: Path) -> None:
    claim_study(location, "min")
    searcher = _searcher(location)
    for number, trial_id in enumerate(["a", "b", "c"]):
        config = searcher.suggest(trial_id)
        assert set(config) == {"latent_dim", "lr"}
        if number < 2:
            searcher.on_trial_result(trial_id, {"objective": 1.0 + number, "training_iteration": 1})
            searcher.on_trial_complete(trial_id, {"objective": 1.0 + number})
    snapshot = tmp_path / "searcher.pkl"
    searcher.save(str(snapshot))
    # After Tune's snapshot, before the kill: "c" finishes, "d" is asked, "x" is asked and
    # told (a short trial that started and ended between two of Tune's saves).
    searcher.on_trial_complete("c", {"objective": 0.5})
    searcher.suggest("d")
    searcher.suggest("x")
    searcher.on_trial_result("x", {"objective": 0.25, "training_iteration": 1})
    searcher.on_trial_complete("x", {"objective": 0.25})
    # The pickle Tune keeps of the searcher itself (tuner.pkl) holds no storage.
    revived = pickle.loads(pickle.dumps(searcher))
    assert revived._storage is None

    assert revived.set_search_properties("objective", "min", to_tune_space(PARAMS)) is False
    revived._setup_study("min")  # what set_search_properties does for a fresh searcher
    revived.restore(str(snapshot))
    trials = {t.number: t for t in _study(location).trials}
    assert [trials[n].state for n in range(5)] == [
        TrialState.COMPLETE,
        TrialState.COMPLETE,
        TrialState.COMPLETE,  # kept as told, though the snapshot had it running
        TrialState.FAIL,  # "d" was not in the snapshot: Tune reruns its slot as a new trial
        TrialState.COMPLETE,  # "x" neither, but TPE keeps what it was told
    ]
    forgotten = [n for n in range(5) if trials[n].user_attrs.get(ATTR_FORGOTTEN)]
    assert forgotten == [3]  # "x" stays as told: Optuna keeps a finished trial as it is
    assert trials[4].value == 0.25
    assert trials[2].value == 0.5
    # Tune runs "c" on from its checkpoint: its results no longer reach the finished trial.
    revived.on_trial_result("c", {"objective": 9.0, "training_iteration": 2})
    revived.on_trial_complete("c", {"objective": 9.0})
    assert _study(location).trials[2].value == 0.5
    revived.suggest("e")
    new = _study(location).trials[-1]
    assert new.user_attrs[ATTR_RAY_TRIAL] == "e"
    assert new.user_attrs[ATTR_SEEN] == 4  # a, b, c, x: past the 2 start-up trials


def test_database_storage_reads_its_password_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "secret-db-folder"  # stands for a password: only in the environment
    secret.mkdir()
    monkeypatch.setenv("STUDY_DB_DIR", str(secret))
    location = StudyLocation(str(tmp_path / "sweep"), "id-1", "sqlite:///${STUDY_DB_DIR}/o.db")
    claim_study(location, "min")
    searcher = _searcher(location)
    searcher.suggest("a")
    assert (secret / "o.db").is_file()
    assert b"secret-db-folder" not in pickle.dumps(searcher)
    assert b"secret-db-folder" not in pickle.dumps(searcher.__getstate__())


def test_a_study_of_another_sweep_is_refused_and_an_empty_one_taken_over(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "quick"
    sweep_dir.mkdir()
    first = StudyLocation(str(sweep_dir), "first")
    study = claim_study(first, "min")
    second = StudyLocation(str(sweep_dir), "second")
    check_study(second, resuming=False)  # no trials yet: a new sweep may take it over
    study.add_trial(optuna.trial.create_trial(value=1.0))
    with pytest.raises(StudyError, match=r"belongs to another sweep .*first.*holds 1 trials"):
        check_study(second, resuming=False)
    with pytest.raises(StudyError, match="belongs to another sweep.*this sweep's id is second"):
        check_study(second, resuming=True)
    check_study(first, resuming=True)

    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    claim_study(StudyLocation(str(empty_dir), "old"), "max")  # a start that failed early
    taken = claim_study(StudyLocation(str(empty_dir), "new"), "min")
    assert taken.direction == optuna.study.StudyDirection.MINIMIZE
    assert taken.user_attrs["sweep_id"] == "new"


def test_a_journal_copied_from_another_sweep_is_named(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    claim_study(StudyLocation(str(other), "x"), "min")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / JOURNAL_FILE).write_bytes((other / JOURNAL_FILE).read_bytes())
    with pytest.raises(
        StudyError, match=r"mine/optuna.journal: holds the Optuna studies \['other'\]"
    ):
        check_study(StudyLocation(str(mine), "y"), resuming=True)


def test_an_unreachable_study_database_is_named_with_its_password_masked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPTUNA_DB_PASSWORD", "s3cret-pw")
    location = StudyLocation(
        "/tmp/x", "id", "postgresql+psycopg2://optuna:${OPTUNA_DB_PASSWORD}@127.0.0.1:1/optuna"
    )
    with pytest.raises(StudyError) as caught:
        check_study(location, resuming=False)
    message = str(caught.value)
    assert "s3cret-pw" not in message
    assert "postgresql+psycopg2://optuna:***@127.0.0.1:1/optuna" in message
    assert "unreachable" in message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("sweep.optuna_storage=not a url", "sweep.optuna_storage: expected '' .* got 'not a url'"),
        (
            "sweep.optuna_storage=postgresql://optuna:hunter2@db/optuna",
            "write the password as an environment variable reference",
        ),
        ("sweep.tpe_startup_trials=-1", "sweep.tpe_startup_trials: expected an integer >= 0"),
    ],
)
def test_study_settings_are_validated(override: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_space("quick", [override])


def test_study_settings_accept_an_environment_password() -> None:
    url = "postgresql+psycopg2://optuna:${OPTUNA_DB_PASSWORD}@db:5432/optuna"
    spec = load_space("quick", [f"sweep.optuna_storage={url}", "sweep.tpe_startup_trials=0"])
    assert spec.sweep.optuna_storage == url and spec.sweep.tpe_startup_trials == 0


# ---------------------------------------------------------------------------------------------
# Warm start


def _record(trial_id: str, status: TrialStatus, objective: list[float], **params) -> TrialRecord:
    history = [{"epoch": i + 1, "val_recon": v} for i, v in enumerate(objective)]
    return TrialRecord(trial_id, params | {"beta": 1.0e-5}, status, history)


def _spec(params: dict) -> object:
    spec = load_space("quick", ["sweep.emotion_every=0", "sweep.metric=val_recon"])
    spec.params = params
    return spec


OLD_RECORDS = [
    _record("t1", TrialStatus.FINISHED, [2.0, 1.5, 1.7], latent_dim=8, lr=1.0e-3),
    _record("t2", TrialStatus.KILLED_BY_ASHA, [1.9], latent_dim=16, lr=5.0e-2),
    _record("t3", TrialStatus.FAILED, [], latent_dim=16, lr=2.0e-3),
]


def test_warm_start_seeds_the_study_with_each_trials_best_value(tmp_path: Path) -> None:
    spec = _spec({"latent_dim": {"choice": [8, 16]}, "lr": {"loguniform": [1.0e-4, 1.0e-1]}})
    distributions = search_distributions(spec.params)
    warm = warm_start_points("runs/old", _spec(spec.params), OLD_RECORDS, spec, distributions)
    assert [(p.source_trial, p.value) for p in warm.points] == [("t1", 1.5), ("t2", 1.9)]
    assert warm.points[0].params == {"latent_dim": 8, "lr": 1.0e-3}

    location = StudyLocation(str(tmp_path / "new"), "n")
    Path(location.sweep_dir).mkdir()
    study = claim_study(location, "min")
    seed_study(study, warm, distributions)
    seed_study(study, warm, distributions)  # a resumed start adds nothing twice
    assert [(t.value, t.user_attrs[ATTR_WARM_START]) for t in study.trials] == [
        (1.5, "runs/old"),
        (1.9, "runs/old"),
    ]
    # TPE models them: with 2 start-up trials, the first proposal is already model-based.
    searcher = SweepSearch(location, optuna.samplers.TPESampler(seed=0, n_startup_trials=2))
    searcher.set_search_properties("objective", "min", to_tune_space(spec.params))
    searcher.suggest("first")
    assert _study(location).trials[-1].user_attrs[ATTR_SEEN] == 2


def test_warm_start_names_what_does_not_fit_or_skips_it() -> None:
    old = _spec({"latent_dim": {"choice": [8, 16]}, "lr": {"loguniform": [1.0e-4, 1.0e-1]}})
    narrow = _spec({"latent_dim": {"choice": [8, 16]}, "lr": {"loguniform": [1.0e-4, 1.0e-2]}})
    distributions = search_distributions(narrow.params)
    with pytest.raises(WarmStartError, match=r"trial t2 has lr=0.05 outside \[0.0001, 0.01\]"):
        warm_start_points("runs/old", old, OLD_RECORDS, narrow, distributions)
    warm = warm_start_points("runs/old", old, OLD_RECORDS, narrow, distributions, True)
    assert [p.source_trial for p in warm.points] == ["t1"]
    assert warm.skipped == ["trial t2: lr=0.05 outside [0.0001, 0.01]"]

    fewer = _spec({"lr": {"loguniform": [1.0e-4, 1.0e-1]}, "latent_dim": 8})
    with pytest.raises(WarmStartError, match=r"also searched \['latent_dim'\]"):
        warm_start_points("runs/old", old, OLD_RECORDS, fewer, search_distributions(fewer.params))
    warm = warm_start_points(
        "runs/old", old, OLD_RECORDS, fewer, search_distributions(fewer.params), True
    )
    assert warm.points[0].params == {"lr": 1.0e-3}
    assert "parameters ['latent_dim'] (not searched here) dropped" in warm.skipped[0]

    more = _spec(old.params | {"grad_clip": {"uniform": [0.5, 2.0]}})
    with pytest.raises(WarmStartError, match=r"searches \['grad_clip'\], which that sweep did not"):
        warm_start_points("runs/old", old, OLD_RECORDS, more, search_distributions(more.params))


def test_optuna_dashboard_serves_the_sweeps_journal(tmp_path: Path) -> None:
    """The README's `optuna-dashboard runs/<sweep>/optuna.journal`: a real dashboard on
    127.0.0.1 reads the study and its trials; stopped by its pid."""
    location = StudyLocation(str(tmp_path / "quick"), "id-1")
    Path(location.sweep_dir).mkdir()
    claim_study(location, "min")
    searcher = _searcher(location)
    for number, trial_id in enumerate(["a", "b"]):
        searcher.suggest(trial_id)
        searcher.on_trial_complete(trial_id, {"objective": 1.0 + number})
    port = free_port()
    dashboard = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("optuna-dashboard")),
            str(Path(location.sweep_dir) / JOURNAL_FILE),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--quiet",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        summaries = _get_json(f"http://127.0.0.1:{port}/api/studies", dashboard)["study_summaries"]
        assert [s["study_name"] for s in summaries] == ["quick"]
        study = _get_json(
            f"http://127.0.0.1:{port}/api/studies/{summaries[0]['study_id']}", dashboard
        )
        trials = study["trials"]
        assert [t["state"] for t in trials] == ["Complete", "Complete"]
        assert [t["values"] for t in trials] == [[1.0], [2.0]]
        ray_ids = [{a["key"]: a["value"] for a in t["user_attrs"]}[ATTR_RAY_TRIAL] for t in trials]
        assert ray_ids == ["a", "b"]
    finally:
        dashboard.terminate()
        try:
            dashboard.wait(timeout=10)
        except subprocess.TimeoutExpired:  # its server may sit in a request: by pid, hard
            dashboard.kill()
            dashboard.wait(timeout=30)


def _get_json(url: str, server: subprocess.Popen, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the dashboard exited: {server.stderr.read().decode()[-2000:]}")
        try:
            response = requests.get(url, timeout=5)
        except requests.ConnectionError:
            time.sleep(0.3)
            continue
        response.raise_for_status()
        return response.json()
    raise AssertionError(f"{url}: no answer within {timeout} s")
