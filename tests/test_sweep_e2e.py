"""The real sweep, end to end: the CLI, a real local Ray cluster, a real MLflow sqlite store.

Each test shrinks the shipped `quick` space (fewer clips, epochs and samples) instead of
inventing its own, so what is tested is what the README runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
import soundfile as sf
from cluster_helpers import mlflow_server, postgres_database
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from ray.tune import ExperimentAnalysis

from emovae.audio.export import read_manifest
from emovae.checkpoint import read_checkpoint
from emovae.config import FeatureConfig
from sweeps.checkpoint_pruner import restore_points
from sweeps.finaliser import FINISHED_FILE
from sweeps.results import load_trial_records
from sweeps.study import ATTR_FORGOTTEN, ATTR_RAY_TRIAL, ATTR_SEEN, JOURNAL_FILE
from sweeps.sweep_folder import read_state
from sweeps.tracking import (
    TAG_FORGOTTEN,
    TAG_ROLE,
    TAG_TRIAL_ID,
    TAG_TRIAL_STATUS,
    create_child_run,
)
from sweeps.trainable import emotion_metrics_due
from sweeps.trials import TrialStatus

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SHRINK = [
    "data.synthetic_speakers=5",
    "data.synthetic_per_emotion=2",
    "features.duration=1.0",
    "train.max_epochs=4",
    "train.hidden_channels=32",
    "train.prior_channels=16",
    "sweep.grace_period=1",
]
# For tests of other things: the emotion judge, the sample metrics (the quick space's objective
# needs them, so the objective becomes val_recon) and the exported-audio scores cost time
# (test_quick_sweep_end_to_end covers them).
NO_EMOTION = [
    "sweep.emotion_every=0",
    "sweep.metric=val_recon",
    "finalise.audio_metrics=false",
]


def sweep_command(out: Path, cache: Path, *extra: str, space: str = "quick") -> list[str]:
    overrides = [*SHRINK, f"data.cache_dir={cache}", *extra]
    command = [sys.executable, str(REPO / "sweeps" / "run.py"), "--space", space, "--out", str(out)]
    for override in overrides:
        command += ["--set", override]
    return command


def run(command: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
    )


def mlflow_runs(sweep_dir: Path, uri: str | None = None) -> tuple[MlflowClient, list]:
    """The sweep's runs: in its own sqlite store, or on the MLflow server at `uri`."""
    client = MlflowClient(uri or f"sqlite:///{sweep_dir / 'mlflow.db'}")
    experiments = [e for e in client.search_experiments() if e.name.startswith("emovae-")]
    assert len(experiments) == 1
    return client, client.search_runs([experiments[0].experiment_id], max_results=1000)


def by_role(runs: list, role: str) -> list:
    return [r for r in runs if r.data.tags.get(TAG_ROLE) == role]


def epoch_steps(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(int(m.step) for m in client.get_metric_history(run_id, "val_recon"))


def trial_dirs(sweep_dir: Path) -> list[Path]:
    return [p for p in (sweep_dir / "tune").iterdir() if (p / "params.json").is_file()]


# The validation emotion and sample metrics a trial reports (sweeps.trainable): computed afresh
# on the first epoch it runs, on every sweep.emotion_every-th and on its last, and repeated
# unchanged on the epochs in between.
CADENCE_METRICS = (
    "val_emotion_acc_real",
    "val_emotion_acc_recon",
    "val_emotion_acc_drop",
    "val_latent_silhouette",
    "val_fd_recon",
    "val_gen_emotion_acc",
    "val_gen_fd",
    "val_gen_diversity",
    "val_gen_diversity_ratio",
)
# Continuous in the model's weights, so different on every epoch that computes them afresh.
RECOMPUTED_METRICS = ("val_fd_recon", "val_gen_fd", "val_gen_diversity")
# May be undefined (NaN, which the records leave out) on an epoch; the others always have a value.
MAY_BE_UNDEFINED = frozenset({"val_latent_silhouette"})


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _assert_emotion_cadence(out: Path, client: MlflowClient, trials: list, every: int) -> None:
    """Through real Tune: in each trial's per-epoch results (the project's trial records, read
    from Tune's experiment folder as the finaliser and the report read them), the emotion
    metrics change only on the epochs `emotion_metrics_due` computes them and repeat the
    previous epoch's values exactly on the others; the epoch numbers are Tune's iterations, the
    last-epoch flag is set on a finished trial's last epoch only, and each trial's MLflow run
    holds the same values per step."""
    records = {r.trial_id: r for r in load_trial_records(out / "tune")}
    frames = ExperimentAnalysis(str(out / "tune")).trial_dataframes
    run_of = {r.data.tags[TAG_TRIAL_ID]: r.info.run_id for r in trials}
    assert set(records) == set(run_of)
    carried, recomputed = [], []
    for trial_id, record in records.items():
        rows = record.history
        epochs = [int(row["epoch"]) for row in rows]
        assert epochs == list(range(1, len(rows) + 1)), (trial_id, epochs)
        iterations = frames[trial_id]["training_iteration"].tolist()
        assert iterations == epochs, (trial_id, iterations, epochs)  # one Tune result per epoch
        finished = record.status == TrialStatus.FINISHED
        flags = [row["is_last_epoch"] for row in rows]
        assert flags == [0.0] * (len(rows) - 1) + [float(finished)], (trial_id, flags)
        previous: dict[str, float] | None = None
        for epoch, row in zip(epochs, rows, strict=True):
            is_last = row["is_last_epoch"] >= 1.0
            due = emotion_metrics_due(epoch, every, is_last)
            assert due == (epoch % every == 0 or is_last), (epoch, every, is_last)
            missing = [k for k in CADENCE_METRICS if k not in row and k not in MAY_BE_UNDEFINED]
            assert not missing, (trial_id, epoch, missing)
            values = {k: row.get(k, math.nan) for k in CADENCE_METRICS}
            if previous is not None and due:  # computed afresh on a model one epoch further
                same = [k for k in RECOMPUTED_METRICS if _same(values[k], previous[k])]
                assert not same, f"trial {trial_id} epoch {epoch}: {same} not recomputed"
                recomputed.append((trial_id, epoch))
            elif previous is not None:  # carried forward: every value exactly the last one
                changed = {
                    k: (previous[k], values[k])
                    for k in CADENCE_METRICS
                    if not _same(values[k], previous[k])
                }
                assert not changed, f"trial {trial_id} epoch {epoch} is not due: {changed}"
                carried.append((trial_id, epoch))
            previous = values
        for key in CADENCE_METRICS:
            logged = {
                int(m.step): m.value for m in client.get_metric_history(run_of[trial_id], key)
            }
            reported = {e: row[key] for e, row in zip(epochs, rows, strict=True) if key in row}
            assert logged == pytest.approx(reported, rel=1e-12), (trial_id, key)
    # Both kinds of epoch occurred, so neither check above passed for want of cases.
    assert carried and recomputed, (carried, recomputed)


def _assert_final_retrains_the_best_trial(
    out: Path, client: MlflowClient, final, trials: list, final_epochs: int
) -> None:
    """The `final` run retrained the best trial's configuration. The best trial is found here
    from the trial runs' MLflow histories of the sweep's objective; the final run's params are
    that trial run's, but for max_epochs (finalise.max_epochs); the checkpoint the finaliser
    wrote was trained with the values Tune gave that trial (its params.json) and holds what the
    final run logged. The final run trained finalise.max_epochs epochs (`final_epochs`)."""
    spec = read_state(out).spec()
    metric, mode = spec.sweep.metric, spec.sweep.mode
    pick = min if mode == "min" else max
    best_of = {}
    for r in trials:
        if r.data.tags[TAG_TRIAL_STATUS] == "FAILED":
            continue
        history = client.get_metric_history(r.info.run_id, metric)
        values = [m.value for m in history if math.isfinite(m.value)]
        if values:
            best_of[r.data.tags[TAG_TRIAL_ID]] = pick(values)
    best_id = pick(best_of, key=best_of.__getitem__)
    final_params = final.data.params
    assert final_params["best_trial_id"] == best_id, (best_of, final_params["best_trial_id"])
    assert float(final_params[f"sweep_best_{metric}"]) == pytest.approx(best_of[best_id])
    (best_run,) = [r for r in trials if r.data.tags[TAG_TRIAL_ID] == best_id]
    trial_params = best_run.data.params
    shared = set(trial_params) & set(final_params)
    assert set(spec.params) <= shared, (set(spec.params), shared)
    differ = {
        k: (trial_params[k], final_params[k]) for k in shared if trial_params[k] != final_params[k]
    }
    expected = {"max_epochs": (str(spec.experiment.train.max_epochs), str(final_epochs))}
    assert differ == expected, f"(best trial's, final run's) params that differ: {differ}"
    assert epoch_steps(client, final.info.run_id) == list(range(1, final_epochs + 1))

    (trial_dir,) = [p for p in trial_dirs(out) if best_id in p.name]
    sampled = json.loads((trial_dir / "params.json").read_text())
    assert set(sampled) == set(spec.params)
    checkpoint = read_checkpoint(out / "final" / "checkpoints" / "best.pt")
    trained = checkpoint["train_config"]
    assert {k: trained[k] for k in sampled} == sampled, (trained, sampled)
    assert trained["max_epochs"] == final_epochs
    assert {k: str(v) for k, v in trained.items()} == {k: final_params[k] for k in trained}
    assert checkpoint["feature_config"] == dataclasses.asdict(spec.experiment.features)


# A clip whose RMS around its mean is below this (-66 dBFS: 16 steps of 16-bit PCM) is silence.
# The shrunk sweeps' barely trained models export clips at about 0.004.
SILENCE_RMS = 5e-4
EXPORTED_SETS = ("samples", "reconstructions", "conversions")
# With the exported-audio scores on, the augmentation test's control set too.
SCORED_SETS = (*EXPORTED_SETS, "augment_control")


def _assert_exported_audio(
    final_dir: Path,
    features: FeatureConfig,
    n_samples: int,
    sets: tuple[str, ...] = EXPORTED_SETS,
) -> None:
    """Every WAV the finaliser exported, as its set's manifest lists it, is real audio: mono,
    at the features' sample rate, features.duration long, finite, not silent, and no two clips
    of a set alike; and each set's manifest lists exactly the WAVs in its folder."""
    length = round(features.duration * features.sample_rate)
    for name in sets:
        folder = final_dir / name
        files = [row["file"] for row in read_manifest(folder / "manifest.csv")]
        assert files and sorted(files) == sorted(p.name for p in folder.glob("*.wav")), name
        clips = set()
        for file in files:
            info = sf.info(folder / file)
            shape = (info.samplerate, info.channels, info.frames)
            assert shape == (features.sample_rate, 1, length), (name, file, shape)
            audio, _ = sf.read(folder / file, dtype="float64")
            assert np.isfinite(audio).all(), (name, file)
            rms = float(np.sqrt(np.mean((audio - audio.mean()) ** 2)))
            assert rms > SILENCE_RMS, (name, file, rms)
            clips.add(audio.tobytes())
        assert len(clips) == len(files), f"{name}: identical clips"
    assert len(read_manifest(final_dir / "samples" / "manifest.csv")) == n_samples


# The quick sweep's emotion metrics every 3 epochs (the quick space has 2): with 4 epochs a
# trial computes them on epoch 1 (its first), 3 (divisible) and 4 (its last, not divisible) and
# carries them on epoch 2, so each rule of the cadence shows in the results.
QUICK_EMOTION_EVERY = 3


def test_quick_sweep_end_to_end(
    tmp_path: Path, sweep_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "sweep"
    result = run(
        sweep_command(
            out,
            sweep_cache,
            "sweep.num_samples=8",
            f"sweep.emotion_every={QUICK_EMOTION_EVERY}",
            "finalise.max_epochs=2",
            "finalise.n_samples=6",
        )
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "Best trial" in result.stdout

    client, runs = mlflow_runs(out)
    parents, trials, finals = by_role(runs, "sweep"), by_role(runs, "trial"), by_role(runs, "final")
    # The console, captured without a terminal: plain lines, every trial, the best one and the
    # report, and Ray's own output in the sweep folder instead.
    console = result.stdout + result.stderr
    assert len(console.splitlines()) < 80, console
    assert "\x1b[" not in console and "\r" not in console
    for r in trials:
        assert f"trial {r.data.tags[TAG_TRIAL_ID]} started" in console
    assert f"Best trial {parents[0].data.tags['best.trial_id']}" in console
    assert f"Report (every metric): {out / 'final' / 'report' / 'report.md'}" in console
    assert (out / "sweep.log").is_file() and str(out / "sweep.log") in console.splitlines()[0]
    assert all((p / "stdout").is_file() and (p / "stderr").is_file() for p in trial_dirs(out))
    assert len(parents) == 1 and len(finals) == 1 and len(trials) == 8
    parent_id = parents[0].info.run_id
    assert all(r.data.tags["mlflow.parentRunId"] == parent_id for r in trials + finals)
    assert len({r.data.tags[TAG_TRIAL_ID] for r in trials}) == 8
    assert parents[0].data.params["data_fingerprint"]
    # MLflow's UI opens the experiment on its runs; each run names the corpus it trained on.
    experiment = client.get_experiment(parents[0].info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs_page = f"#/experiments/{experiment.experiment_id}?workflowType=machine_learning"
    assert f"http://127.0.0.1:5000/{runs_page}" in result.stdout
    for r in parents + trials:
        (corpus,) = [d.dataset for d in r.inputs.dataset_inputs]
        assert corpus.name == "synthetic"
        assert corpus.digest == parents[0].data.params["data_fingerprint"]
        profile = json.loads(corpus.profile)
        assert profile["clips"]["train"] == int(parents[0].data.params["data_n_train"])
        assert sum(profile["train"].values()) == profile["clips"]["train"]
    # The search's Optuna study: one trial per Ray trial, every one finished.
    study = _study(out)
    assert sorted(t.user_attrs[ATTR_RAY_TRIAL] for t in study.trials) == sorted(
        r.data.tags[TAG_TRIAL_ID] for r in trials
    )
    assert all(t.state.is_finished() for t in study.trials)
    # The objective is the samples' distance to the real validation clips (the quick space's).
    assert "best_val_gen_fd" in parents[0].data.metrics
    # The emotion judge trained once for the sweep; every trial reported emotion metrics and
    # the emotion accuracy and distance of samples from its prior.
    assert 0.0 <= parents[0].data.metrics["judge_test_acc"] <= 1.0
    assert all("val_emotion_acc_recon" in r.data.metrics for r in trials)
    assert all({"val_gen_fd", "val_gen_emotion_acc"} <= set(r.data.metrics) for r in trials)

    statuses = Counter(r.data.tags[TAG_TRIAL_STATUS] for r in trials)
    assert statuses["KILLED_BY_ASHA"] >= 1, statuses
    assert statuses["FAILED"] == 0, statuses
    for r in trials:
        steps = epoch_steps(client, r.info.run_id)
        assert steps == list(range(1, len(steps) + 1)), steps  # one value per epoch, no gaps
        expected = "FINISHED" if r.data.tags[TAG_TRIAL_STATUS] == "FINISHED" else "KILLED"
        assert r.info.status == expected
        assert r.data.params["lr"] and r.data.params["latent_dim"]
        artifacts = {
            a.path
            for folder in ("checkpoint", "plots")
            for a in client.list_artifacts(r.info.run_id, folder)
        }
        assert artifacts == {"checkpoint/best.pt"}, artifacts
    killed = [r for r in trials if r.data.tags[TAG_TRIAL_STATUS] == "KILLED_BY_ASHA"]
    assert all(len(epoch_steps(client, r.info.run_id)) < 4 for r in killed)
    _assert_emotion_cadence(out, client, trials, every=QUICK_EMOTION_EVERY)

    final = finals[0]
    assert final.info.status == "FINISHED"
    _assert_final_retrains_the_best_trial(out, client, final, trials, final_epochs=2)
    assert final.data.params["best_trial_id"] == parents[0].data.tags["best.trial_id"]
    assert "test_recon" in final.data.metrics and "test_snr_db" in final.data.metrics
    assert "test_emotion_acc_recon" in final.data.metrics
    # The exported WAVs were read back and judged, beside the real test clips.
    for name in ("real", "recon", "gen", "conv"):
        assert 1.0 <= final.data.metrics[f"wav_{name}_dnsmos"] <= 5.0, name
        assert 0.0 <= final.data.metrics[f"wav_{name}_smile_acc"] <= 1.0, name
    assert 0.0 < final.data.metrics["wav_recon_stoi"] <= 1.0
    assert "wav_aug_smile_uar_gain" in final.data.metrics
    # ... and against its control, vocoded copies of real training clips (as many per emotion).
    control = read_manifest(out / "final" / "augment_control" / "manifest.csv")
    samples = read_manifest(out / "final" / "samples" / "manifest.csv")
    assert Counter(r["emotion"] for r in control) == Counter(r["emotion"] for r in samples)
    assert 0.0 <= final.data.metrics["wav_aug_cnn_uar_real_plus_control"] <= 1.0
    assert final.data.metrics["wav_aug_smile_uar_gain_over_control"] == pytest.approx(
        final.data.metrics["wav_aug_smile_uar_real_plus_generated"]
        - final.data.metrics["wav_aug_smile_uar_real_plus_control"]
    )
    # A conditional model is registered too, with its emotion input named.
    versions = client.search_model_versions("name='emovae'")
    assert len(versions) == 1 and versions[0].run_id == final.info.run_id
    # set_tracking_uri also exports MLFLOW_TRACKING_URI, which later tests' drivers would
    # inherit (and log there): the context puts the variable back as it was.
    previous = mlflow.get_tracking_uri()
    with monkeypatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)
        mlflow.set_tracking_uri(client.tracking_uri)
        try:
            signature = mlflow.models.get_model_info(versions[0].source).signature
        finally:
            mlflow.set_tracking_uri(previous)
    assert [spec.name for spec in signature.inputs.inputs] == ["log_mel", "emotion"]

    features = read_state(out).spec().experiment.features
    assert (features.sample_rate, features.duration) == (22050, 1.0)  # features.duration in SHRINK
    _assert_exported_audio(out / "final", features, n_samples=6, sets=SCORED_SETS)
    report = (out / "final" / "report" / "report.md").read_text()
    assert parents[0].data.tags["best.trial_id"] in report
    assert (out / "trials.csv").read_text().count("\n") == 9  # header + one row per trial


def _wait_for_epochs(
    sweep_dir: Path, trials: int, timeout: float, driver: subprocess.Popen
) -> None:
    """Until `trials` trials have reported an epoch (Ray's result.json files: plain file reads,
    so the watcher never touches the MLflow store the driver is writing). A driver that exits
    first fails the test at once."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if driver.poll() is not None:
            raise AssertionError(f"the driver exited ({driver.returncode}) before {trials} epochs")
        reported = [p for p in sweep_dir.glob("tune/*/result.json") if p.stat().st_size > 0]
        if len(reported) >= trials:
            return
        time.sleep(0.2)
    raise AssertionError(f"no {trials} trials with an epoch within {timeout} s")


def _study(sweep_dir: Path, storage_url: str | None = None) -> optuna.Study:
    """The sweep's Optuna study: its journal file, or the database at `storage_url`."""
    storage = storage_url or JournalStorage(JournalFileBackend(str(sweep_dir / JOURNAL_FILE)))
    return optuna.load_study(study_name=sweep_dir.name, storage=storage)


@contextlib.contextmanager
def team_stores(
    root: Path, backend: str | None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[list[str], str | None, str | None]]:
    """Where PostgreSQL runs (always on CI): an MLflow server on `backend` and the Optuna
    study in a database of its own, its password from the environment, as a team runs them.
    Yields (driver arguments, the MLflow server's URI, the study's URL); else the sweep
    folder's own sqlite store and journal: ([], None, None)."""
    if backend is None:
        yield [], None, None
        return
    secret = "pw-sigkill-test"  # trust authentication ignores it; the URL carries it only
    monkeypatch.setenv("EMOVAE_TEST_STUDY_PASSWORD", secret)
    with mlflow_server(root / "mlflow", backend) as server, postgres_database(secret) as study:
        study_setting = study.replace(f":{secret}@", ":${EMOVAE_TEST_STUDY_PASSWORD}@")
        arguments = ["--tracking-uri", server.uri, "--set", f"sweep.optuna_storage={study_setting}"]
        yield arguments, server.uri, study


def _wait_for_finished_trials(
    sweep_dir: Path,
    finished: int,
    timeout: float,
    driver: subprocess.Popen,
    max_epochs: int,
    storage_url: str | None = None,
) -> None:
    """Until the sweep's Optuna study holds `finished` finished trials and another trial is
    mid-training: not finished in the study, past its first checkpoints and far from its last
    epoch (one that just ran its last epoch has nothing left to continue), and in Tune's
    latest saved state with a checkpoint to restore from (a trial the state lacks is
    forgotten on resume)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if driver.poll() is not None:
            raise AssertionError(f"the driver exited ({driver.returncode}) too early")
        if storage_url or (sweep_dir / JOURNAL_FILE).is_file():
            try:
                trials = _study(sweep_dir, storage_url).get_trials(deepcopy=False)
            except KeyError:  # the study is not created yet
                trials = []
            done = {t.user_attrs.get(ATTR_RAY_TRIAL) for t in trials if t.state.is_finished()}
            restore_from = restore_points(sweep_dir / "tune")
            training = [
                trial_id
                for trial_id, epochs in _epochs_by_trial(sweep_dir).items()
                if trial_id not in done
                and 2 <= max(epochs) <= max_epochs - 10
                and restore_from.get(trial_id) is not None
            ]
            if len(done) >= finished and training:
                return
        time.sleep(0.5)
    raise AssertionError(f"no {finished} finished trials and a training one within {timeout} s")


def _epochs_by_trial(sweep_dir: Path) -> dict[str, list[int]]:
    """Each trial's epochs as its result.json lists them (one row per reported epoch)."""
    epochs: dict[str, list[int]] = {}
    for path in sweep_dir.glob("tune/*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            epochs[rows[0]["trial_id"]] = [int(row["epoch"]) for row in rows]
    return epochs


def test_sigkill_driver_then_resume_keeps_the_study_and_one_run_per_trial(
    tmp_path: Path,
    sweep_cache: Path,
    mlflow_backend_store: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Killed past TPE's start-up trials, resumed: the study keeps every trial told before
    the kill and the proposals after the restart model them; trials training at the kill
    continue from their checkpoints; MLflow keeps one run per trial. Where PostgreSQL runs
    (CI), on a team's stores: MLflow's server and the study on PostgreSQL (`team_stores`);
    the Ctrl-C test resumes a sweep on the folder's own sqlite store and journal."""
    with team_stores(tmp_path, mlflow_backend_store, monkeypatch) as stores:
        _sigkill_then_resume(tmp_path / "sweep", sweep_cache, *stores)


# Enough epochs that a trial is still training when the driver is killed: an epoch of the shrunk
# model takes well under a second.
KILLED_SWEEP_EPOCHS = 40


def _sigkill_then_resume(
    out: Path,
    sweep_cache: Path,
    store_arguments: list[str],
    mlflow_uri: str | None,
    study_url: str | None,
) -> None:
    command = sweep_command(
        out,
        sweep_cache,
        "sweep.num_samples=6",
        "sweep.tpe_startup_trials=2",
        # Long trials, so also the test of MLflow's system metrics in the trials' runs.
        "sweep.system_metrics=true",
        "sweep.system_metrics_interval_s=0.5",
        f"train.max_epochs={KILLED_SWEEP_EPOCHS}",
        f"train.patience={KILLED_SWEEP_EPOCHS}",
        *NO_EMOTION,
    )
    driver = subprocess.Popen(
        [*command, *store_arguments, "--no-finalise"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # the driver leads a process group holding the Ray it starts
    )
    try:
        _wait_for_finished_trials(
            out,
            2,
            timeout=900,
            driver=driver,
            max_epochs=KILLED_SWEEP_EPOCHS,
            storage_url=study_url,
        )
    finally:
        # SIGKILL the whole group: the driver and the Ray processes it started (agents that
        # would otherwise outlive it, re-parented to init).
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=60)
    before = {t.number: t for t in _study(out, study_url).trials}
    finished_before = {n: t for n, t in before.items() if t.state.is_finished()}
    epochs_before = _epochs_by_trial(out)
    assert len(finished_before) >= 2
    # What the resume restores: Tune's last saved state, each trial's checkpoint in it.
    restore_from = restore_points(out / "tune")
    asked_before = {t.user_attrs.get(ATTR_RAY_TRIAL) for t in before.values()}

    resumed = run(
        [
            sys.executable,
            str(REPO / "sweeps" / "run.py"),
            "--out",
            str(out),
            "--resume",
            "--no-finalise",
        ]
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-5000:]

    # The study: what was told before the kill is unchanged; later proposals saw all of it.
    after = {t.number: t for t in _study(out, study_url).trials}
    for number, trial in finished_before.items():
        assert after[number].state == trial.state and after[number].value == trial.value
    proposed_after = [t for n, t in after.items() if n > max(before)]
    assert proposed_after, "every trial was proposed before the kill: nothing to show"
    for trial in proposed_after:
        assert trial.user_attrs[ATTR_SEEN] >= len(finished_before), trial.user_attrs
    running = [(t.number, t.user_attrs) for t in after.values() if t.state == TrialState.RUNNING]
    assert not running, running

    known = {t.trial_id for t in ExperimentAnalysis(str(out / "tune")).trials}
    assert len(known) == 6, known
    # Exactly the trials Tune's saved state lacked are forgotten (their slots rerun as new
    # trials): in the study, those still running at the kill are marked forgotten (and
    # failed); those told before it keep their value, unmarked. Every trial it held is known.
    assert set(restore_from) <= known, (set(restore_from), known)
    lacked = asked_before - set(restore_from)
    told_before = {t.user_attrs.get(ATTR_RAY_TRIAL) for t in finished_before.values()}
    forgotten_in_study = {
        t.user_attrs.get(ATTR_RAY_TRIAL) for t in after.values() if t.user_attrs.get(ATTR_FORGOTTEN)
    }
    assert forgotten_in_study == lacked - told_before, (forgotten_in_study, lacked, told_before)
    in_study = Counter(
        t.user_attrs[ATTR_RAY_TRIAL] for t in after.values() if not t.user_attrs.get(ATTR_FORGOTTEN)
    )
    assert set(in_study) == known | (lacked & told_before), (in_study, known, lacked)
    assert set(in_study.values()) == {1}, in_study
    assert set(epochs_before) - known <= lacked, (set(epochs_before), known)
    # A trial training at the kill continued from the checkpoint the state names (one per
    # epoch: checkpoint_00000k holds epoch k + 1), not from epoch 1.
    epochs_after = _epochs_by_trial(out)
    continued = [
        trial_id
        for trial_id, epochs in epochs_before.items()
        if restore_from.get(trial_id) is not None and len(epochs_after[trial_id]) > len(epochs)
    ]
    assert continued, (epochs_before, epochs_after, restore_from)
    for trial_id in continued:
        index = int(restore_from[trial_id].name.removeprefix("checkpoint_"))
        first_after = epochs_after[trial_id][len(epochs_before[trial_id])]
        assert first_after == index + 2, (trial_id, index, epochs_after[trial_id])

    client, runs = mlflow_runs(out, mlflow_uri)
    assert study_url is None or not (out / JOURNAL_FILE).exists()
    trials = [r for r in by_role(runs, "trial") if r.data.tags[TAG_TRIAL_ID] in known]
    trial_ids = Counter(r.data.tags[TAG_TRIAL_ID] for r in trials)
    assert set(trial_ids) == known and set(trial_ids.values()) == {1}, trial_ids
    running_runs = [r.data.tags for r in runs if r.info.status == "RUNNING"]
    assert not running_runs, running_runs
    forgotten = [r for r in by_role(runs, "trial") if r.data.tags[TAG_TRIAL_ID] not in known]
    assert {r.data.tags[TAG_TRIAL_ID] for r in forgotten} <= lacked, [
        r.data.tags for r in forgotten
    ]
    for r in forgotten:
        assert r.data.tags[TAG_FORGOTTEN] == "true", r.data.tags
    for r in trials:
        assert TAG_FORGOTTEN not in r.data.tags
        steps = epoch_steps(client, r.info.run_id)
        assert steps == list(range(1, len(steps) + 1)), (r.data.tags[TAG_TRIAL_ID], steps)
        assert r.data.tags[TAG_TRIAL_STATUS] in ("FINISHED", "KILLED_BY_ASHA"), r.data.tags
    assert len(by_role(runs, "sweep")) == 1, [r.data.tags for r in by_role(runs, "sweep")]
    sampled = [r for r in trials if "system/cpu_utilization_percentage" in r.data.metrics]
    assert sampled, "no trial run holds system metrics"
    for r in sampled:
        assert 0 < r.data.metrics["system/system_memory_usage_megabytes"]


def test_nan_trial_fails_alone_and_all_failed_exits_nonzero(
    tmp_path: Path, sweep_cache: Path
) -> None:
    # lr = 1e30 makes the first epoch's loss NaN; the trainer raises, the trial fails.
    out = tmp_path / "mixed"
    result = run(
        sweep_command(
            out,
            sweep_cache,
            "sweep.num_samples=4",
            "params.lr={choice: [1.0e+30, 1.0e-3]}",
            "sweep.seed=3",
            "train.max_epochs=2",
            "finalise.enabled=false",  # the space's setting, as --no-finalise is the flag's
            *NO_EMOTION,
        )
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "Not finalising: the space sets finalise.enabled to false." in result.stdout
    assert not (out / "final").exists()
    client, runs = mlflow_runs(out)
    trials = by_role(runs, "trial")
    failed = [r for r in trials if r.data.tags[TAG_TRIAL_STATUS] == "FAILED"]
    assert failed and len(failed) < len(trials) == 4
    # The compact console keeps a failed trial's whole error and says where its output is.
    for r in failed:
        trial_id = r.data.tags[TAG_TRIAL_ID]
        assert f"trial {trial_id} FAILED" in result.stdout
        (folder,) = [p for p in trial_dirs(out) if trial_id in p.name]
        assert f"its output: {folder / 'stdout'}, {folder / 'stderr'}" in result.stdout
    assert "TrainingDivergedError: epoch 1: non-finite" in result.stdout
    assert "\x1b[" not in result.stdout
    for r in failed:
        assert r.info.status == "FAILED"
        assert "non-finite" in r.data.tags["emovae.error"]
        assert r.data.params["lr"] == "1e+30"

    all_bad = run(
        sweep_command(
            tmp_path / "all-bad",
            sweep_cache,
            "sweep.num_samples=2",
            "params.lr=1.0e+30",
            *NO_EMOTION,
        )
        + ["--no-finalise", "--verbose"]
    )
    assert all_bad.returncode == 2
    assert "all 2 trials failed" in all_bad.stderr and "non-finite" in all_bad.stderr
    # --verbose: Ray Tune's own output (its trial boxes and status tables) on the console.
    assert "Trial status:" in all_bad.stdout and "╭" in all_bad.stdout, all_bad.stdout[-3000:]
    assert not (tmp_path / "all-bad" / "sweep.log").exists()


def test_unreachable_tracking_server_fails_before_any_trial(
    tmp_path: Path, sweep_cache: Path
) -> None:
    out = tmp_path / "sweep"
    result = run(
        sweep_command(out, sweep_cache) + ["--tracking-uri", "http://127.0.0.1:9"],
        timeout=120,
    )
    assert result.returncode == 2
    assert "MLflow tracking server http://127.0.0.1:9 is unreachable" in result.stderr
    assert not (out / "tune").exists()


def _wait_and_interrupt(out: Path, driver: subprocess.Popen) -> tuple[int, str]:
    """Ctrl-C once two trials have trained an epoch: SIGINT to the driver's process group, as
    a terminal sends it to the foreground job; the exit code and what it printed."""
    _wait_for_epochs(out, trials=2, timeout=900, driver=driver)
    os.killpg(driver.pid, signal.SIGINT)
    output, _ = driver.communicate(timeout=300)
    return driver.returncode, output


def test_ctrl_c_stops_without_finalising_and_resume_finishes_once(
    tmp_path: Path, sweep_cache: Path
) -> None:
    out = tmp_path / "sweep"
    command = sweep_command(
        out,
        sweep_cache,
        "sweep.num_samples=4",
        "sweep.max_concurrent=64",  # more than any CI machine fits: said, not silently queued
        # Still training or queued when the signal comes (2 trials run at a time on 2 cores;
        # an epoch of the shrunk model takes 0.2 to 0.5 s: with 12 epochs an idle machine
        # finished all four trials before the signal).
        "train.max_epochs=40",
        "train.patience=40",
        "finalise.max_epochs=1",
        "finalise.n_samples=6",
        *NO_EMOTION,
    )
    driver = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    try:
        code, output = _wait_and_interrupt(out, driver)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait(timeout=60)
    assert code == 130, output[-5000:]
    assert "sweep.max_concurrent is 64, but this machine fits" in output
    assert f"python sweeps/run.py --out {out} --resume" in output, output[-3000:]
    assert "Tuner.restore(" not in output
    assert not (out / "final").exists()  # nothing finalised from a partial sweep

    rows = (out / "trials.csv").read_text().splitlines()[1:]
    statuses = Counter(row.split(",")[1] for row in rows)
    assert statuses["INTERRUPTED"] >= 1, rows
    client, runs = mlflow_runs(out)
    assert [r.info.status for r in by_role(runs, "sweep")] == ["KILLED"]
    assert not [r for r in runs if r.info.status == "RUNNING"]
    interrupted = {row.split(",")[0] for row in rows if row.split(",")[1] == "INTERRUPTED"}
    for r in by_role(runs, "trial"):
        if r.data.tags[TAG_TRIAL_ID] in interrupted:
            assert r.data.tags[TAG_TRIAL_STATUS] == "INTERRUPTED", r.data.tags
            assert r.info.status == "KILLED"
        else:
            assert r.data.tags[TAG_TRIAL_STATUS] in ("FINISHED", "KILLED_BY_ASHA")

    resume = [sys.executable, str(REPO / "sweeps" / "run.py"), "--out", str(out), "--resume"]
    resumed = run(resume)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-5000:]
    client, runs = mlflow_runs(out)
    known = {t.trial_id for t in ExperimentAnalysis(str(out / "tune")).trials}
    trials = by_role(runs, "trial")
    assert Counter(r.data.tags[TAG_TRIAL_ID] for r in trials) == Counter(known)  # reused
    assert {r.data.tags[TAG_TRIAL_STATUS] for r in trials} <= {"FINISHED", "KILLED_BY_ASHA"}
    assert "INTERRUPTED" not in (out / "trials.csv").read_text()
    assert [r.info.status for r in by_role(runs, "final")] == ["FINISHED"]

    # A finalisation killed mid-way leaves its `final` run RUNNING and no finished marker:
    # --resume finalises again and closes that run as KILLED.
    (parent,) = by_role(runs, "sweep")
    create_child_run(
        client, parent.info.experiment_id, parent.info.run_id, "final", {TAG_ROLE: "final"}
    )
    (out / "final" / "finished.json").unlink()
    refinalised = run(resume)
    assert refinalised.returncode == 0, refinalised.stderr[-3000:]
    _, runs = mlflow_runs(out)
    assert sorted(r.info.status for r in by_role(runs, "final")) == [
        "FINISHED",
        "FINISHED",
        "KILLED",
    ]

    again = run(resume, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "complete and finalised" in again.stdout
    assert f"python sweeps/finalise.py --sweep {out}" in again.stdout
    _, runs = mlflow_runs(out)
    assert len(by_role(runs, "final")) == 3  # no further retraining
    _finalise_again(out, runs)


# What finalise.py must write again, each file replaced by the new finalisation.
FINAL_FILES = (
    FINISHED_FILE,
    "checkpoints/best.pt",
    "evaluation/metrics.json",
    "report/report.md",
    *(f"{name}/manifest.csv" for name in EXPORTED_SETS),
)


def _finalise_again(out: Path, runs: list) -> None:
    """`python sweeps/finalise.py --sweep DIR` on a finished, finalised sweep, as --resume
    advises (README: "finalise a finished sweep again"; one `final` run per finalisation): one
    more FINISHED `final` run retraining the same best configuration, the final folder written
    again (checkpoint, metrics, WAV sets, report, finished mark naming the new run) and a new
    model version from that run; the trials are left as they were."""
    finals_before = {r.info.run_id: r for r in by_role(runs, "final")}
    previous = [r for r in finals_before.values() if r.info.status == "FINISHED"]
    trials_before = {r.info.run_id: r.info.status for r in by_role(runs, "trial")}
    final_dir = out / "final"
    mtimes = {name: (final_dir / name).stat().st_mtime_ns for name in FINAL_FILES}
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    versions_before = {v.version for v in client.search_model_versions("name='emovae'")}

    result = run([sys.executable, str(REPO / "sweeps" / "finalise.py"), "--sweep", str(out)])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]

    client, runs = mlflow_runs(out)
    (new,) = [r for r in by_role(runs, "final") if r.info.run_id not in finals_before]
    assert new.info.status == "FINISHED"
    assert {r.info.run_id: r.info.status for r in by_role(runs, "final")} == {
        run_id: r.info.status for run_id, r in finals_before.items()
    } | {new.info.run_id: "FINISHED"}
    assert all(r.data.params == new.data.params for r in previous)  # the same retraining
    trials = by_role(runs, "trial")
    assert {r.info.run_id: r.info.status for r in trials} == trials_before
    spec = read_state(out).spec()
    _assert_final_retrains_the_best_trial(out, client, new, trials, spec.finalise.max_epochs)

    rewritten = [n for n in FINAL_FILES if (final_dir / n).stat().st_mtime_ns > mtimes[n]]
    assert rewritten == list(FINAL_FILES), rewritten
    finished = json.loads((final_dir / FINISHED_FILE).read_text())
    assert finished["run_id"] == new.info.run_id
    (version,) = [
        v for v in client.search_model_versions("name='emovae'") if v.version not in versions_before
    ]
    assert version.run_id == new.info.run_id and version.source == finished["model_uri"]
    # The test metrics on disk are the ones the new run logged.
    written = json.loads((final_dir / "evaluation" / "metrics.json").read_text())
    assert {"test_recon", "test_snr_db"} <= set(written)
    for key, value in written.items():
        if math.isfinite(value):
            assert new.data.metrics[key] == pytest.approx(value, rel=1e-9), key
    assert f"Registered model: {finished['model_uri']}" in result.stdout
    assert f"Report (every metric): {final_dir / 'report' / 'report.md'}" in result.stdout
    best_id = new.data.params["best_trial_id"]
    assert best_id in (final_dir / "report" / "report.md").read_text()
    _assert_exported_audio(final_dir, spec.experiment.features, spec.finalise.n_samples)


def test_trial_shape_no_node_offers_fails_before_anything_is_written(
    tmp_path: Path, sweep_cache: Path
) -> None:
    for setting, shown in (
        ("sweep.gpus_per_trial=0.25", "sweep.gpus_per_trial=0.25"),
        ("sweep.cpus_per_trial=4096", "sweep.cpus_per_trial=4096"),
    ):
        out = tmp_path / setting
        result = run(sweep_command(out, sweep_cache, setting), timeout=180)
        assert result.returncode == 2, result.stderr[-3000:]
        assert shown in result.stderr and "no node of this machine has that" in result.stderr
        assert "--set sweep.gpus_per_trial=0 --set sweep.cpus_per_trial=1" in result.stderr
        assert not out.exists()


def test_failure_before_the_first_trial_closes_the_run_and_a_rerun_starts_again(
    tmp_path: Path, sweep_cache: Path
) -> None:
    out, empty = tmp_path / "sweep", tmp_path / "no-clips"
    empty.mkdir()
    failed = run(sweep_command(out, sweep_cache, f"data.path={empty}", *NO_EMOTION))
    assert failed.returncode == 2 and str(empty) in failed.stderr, failed.stderr[-3000:]
    _, runs = mlflow_runs(out)
    assert [r.info.status for r in by_role(runs, "sweep")] == ["FAILED"]

    rerun = run(
        sweep_command(out, sweep_cache, "sweep.num_samples=1", "train.max_epochs=1", *NO_EMOTION)
        + ["--no-finalise"]
    )
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-5000:]
    _, runs = mlflow_runs(out)
    assert sorted(r.info.status for r in by_role(runs, "sweep")) == ["FAILED", "FINISHED"]
    assert len(by_role(runs, "trial")) == 1
