"""Emotion metrics in the sweep, without Ray: the driver trains the judge once, a trial loads it
and reports the validation emotion metrics every k epochs (carried forward in between), and the
finaliser scores the retrained model on the test speakers.

A tiny judge (2 epochs) on a tiny synthetic corpus keeps each test to seconds; the numbers are
meaningless, the wiring is what is checked.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

import emovae.judge as judge_module
import sweeps.trainable as trainable
from emovae.data.synthetic import generate_synthetic_corpus
from emovae.dataset import PreparedData, prepare_data
from emovae.judge import judge_path
from emovae.train import train
from sweeps.driver import _absolute_cache, _prepare_judge, _trial_experiment
from sweeps.finaliser import CONFUSION_FILE, EMOTION_METRICS_FILE, emotion_evaluation, final_judge
from sweeps.space import SweepSpec, spec_from_dict

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FEATURES = {"n_mels": 32, "duration": 0.75}
TINY_JUDGE = {
    "epochs": 2,
    "channels": 4,
    "n_blocks": 2,
    "embedding_dim": 8,
    "batch_size": 8,
    "num_threads": 1,
    "device": "cpu",
}
TRAIN = {
    "base_channels": 4,
    "latent_dim": 4,
    "batch_size": 8,
    "num_threads": 1,
    "max_epochs": 4,
    "device": "cpu",
}
EVERY = 3  # with 4 epochs: computed on epochs 1 (first), 3 (divisible) and 4 (last)
EMOTION_KEYS = {
    "val_emotion_acc_real",
    "val_emotion_acc_recon",
    "val_emotion_acc_drop",
    "val_latent_silhouette",
    "val_fd_recon",
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def mlflow_parent_run(root: Path) -> tuple[MlflowClient, Any]:
    """A real MLflow store (sqlite) with one parent run; the state `_prepare_judge` reads."""
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.create_experiment("emotion-test", (root / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    return client, types.SimpleNamespace(parent_run_id=run_id)


class CountingTrainJudge:
    def __init__(self) -> None:
        self.calls = 0
        self.real = judge_module.train_judge

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.real(*args, **kwargs)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A spec with emotion metrics on, its data, and the driver's judge preparation, run twice
    (a fresh sweep, then its --resume) with judge training counted."""
    root = tmp_path_factory.mktemp("emotion-sweep")
    corpus = generate_synthetic_corpus(
        root, n_speakers=5, per_emotion=1, duration=FEATURES["duration"], seed=0
    )
    raw = {
        "sweep": {"emotion_every": EVERY, "grace_period": 1},
        "data": {"path": str(corpus), "cache_dir": str(root / "cache")},
        "features": FEATURES,
        "train": TRAIN,
        "params": {"lr": {"loguniform": [1.0e-3, 3.0e-3]}},
        "judge": TINY_JUDGE,
    }
    spec = spec_from_dict(raw, "tiny", "test")
    data = prepare_data(spec.experiment.data, spec.experiment.features)
    client, state = mlflow_parent_run(root)
    counter = CountingTrainJudge()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(judge_module, "train_judge", counter)
        _prepare_judge(client, state, spec, data)
        path = judge_path(trainable.judge_cache_dir(root / "cache"), data.fingerprint, spec.judge)
        mtime = path.stat().st_mtime_ns
        _prepare_judge(client, state, spec, data)  # a resumed sweep: loaded, not retrained
    return {
        "spec": spec,
        "data": data,
        "logged": client.get_run(state.parent_run_id).data,
        "trainings": counter.calls,
        "judge_file": path,
        "mtime": mtime,
    }


def test_the_driver_trains_the_judge_once_and_logs_it(sweep: dict[str, Any]) -> None:
    assert sweep["trainings"] == 1
    assert sweep["judge_file"].stat().st_mtime_ns == sweep["mtime"]
    logged = sweep["logged"]
    expected = {f"judge.{k}": str(v) for k, v in dataclasses.asdict(sweep["spec"].judge).items()}
    assert logged.params == expected
    assert logged.params["judge.epochs"] == "2"
    assert set(logged.metrics) == {"judge_test_acc", "judge_test_uar"}
    assert all(0.0 <= v <= 1.0 for v in logged.metrics.values())


def test_the_driver_does_nothing_without_emotion_metrics(
    sweep: dict[str, Any], tmp_path: Path
) -> None:
    spec: SweepSpec = sweep["spec"]
    off = dataclasses.replace(spec, sweep=dataclasses.replace(spec.sweep, emotion_every=0))
    client, state = mlflow_parent_run(tmp_path)
    _prepare_judge(client, state, off, sweep["data"])
    logged = client.get_run(state.parent_run_id).data
    assert logged.params == {} and logged.metrics == {}
    experiment = _absolute_cache(off)
    trial = _trial_experiment(off, experiment, state)
    assert "emotion" not in trial and trial["objective"] == {"metric": "val_recon", "mode": "min"}


def test_a_trial_loads_the_judge_and_carries_metrics_forward(
    sweep: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """train_trial as Ray runs it (Ray's calls faked): the judge is loaded, not trained, and
    the metrics are computed on epochs 1, 3, 4 and repeated on epoch 2."""
    spec: SweepSpec = sweep["spec"]
    _, state = mlflow_parent_run(tmp_path)
    experiment = _trial_experiment(spec, _absolute_cache(spec), state)
    assert "system_metrics" not in experiment  # off unless sweep.system_metrics
    assert experiment["emotion"]["every"] == EVERY

    reports: list[dict[str, float]] = []
    computed: list[dict[str, float]] = []
    real_metrics = trainable.reconstruction_emotion_metrics

    def spy(*args: Any, **kwargs: Any) -> dict[str, float]:
        result = real_metrics(*args, **kwargs)
        computed.append(dict(result))
        return result

    def report(metrics: dict[str, float], checkpoint: Any) -> None:
        reports.append(dict(metrics) | {"computed_so_far": len(computed)})

    counter = CountingTrainJudge()
    monkeypatch.setattr(judge_module, "train_judge", counter)
    monkeypatch.setattr(trainable, "reconstruction_emotion_metrics", spy)
    monkeypatch.setattr(
        trainable,
        "ray",
        types.SimpleNamespace(
            get_runtime_context=lambda: types.SimpleNamespace(get_node_id=lambda: "node"),
            get_gpu_ids=lambda: [],
        ),
    )
    monkeypatch.setattr(
        trainable,
        "tune",
        types.SimpleNamespace(
            get_checkpoint=lambda: None,
            report=report,
            Checkpoint=types.SimpleNamespace(from_directory=lambda folder: folder),
        ),
    )
    trainable.train_trial({"lr": 2e-3}, experiment, cpus_per_trial=1)

    assert counter.calls == 0
    assert sweep["judge_file"].stat().st_mtime_ns == sweep["mtime"]
    assert [r["epoch"] for r in reports] == [1.0, 2.0, 3.0, 4.0]
    assert [r["computed_so_far"] for r in reports] == [1, 1, 2, 3]
    for row in reports:
        assert EMOTION_KEYS <= set(row)
        values = {k: row[k] for k in EMOTION_KEYS}
        # What the epoch reports is the latest computation: epoch 2 repeats epoch 1's.
        latest = computed[int(row["computed_so_far"]) - 1]
        assert values == pytest.approx(latest, nan_ok=True)
        assert 0.0 <= row["val_emotion_acc_recon"] <= 1.0
        assert math.isfinite(row["val_fd_recon"])
    # Each epoch also carries the running best of the objective, which ASHA compares.
    running = [min(r["val_recon"] for r in reports[: i + 1]) for i in range(len(reports))]
    assert [r["best_val_recon"] for r in reports] == running


@pytest.mark.parametrize("conditional", [True, False])
def test_the_finaliser_scores_the_model_on_the_test_speakers(
    sweep: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, conditional: bool
) -> None:
    spec: SweepSpec = sweep["spec"]
    data: PreparedData = sweep["data"]
    config = dataclasses.replace(spec.experiment.train, conditional=conditional, max_epochs=1)
    result = train(config, data, tmp_path / "checkpoints")
    counter = CountingTrainJudge()
    monkeypatch.setattr(judge_module, "train_judge", counter)
    judge = final_judge(data, spec.judge, spec.experiment.data.cache_dir, "cpu")
    evaluation = emotion_evaluation(
        result.best_checkpoint,
        data,
        judge,
        tmp_path / "evaluation",
        n_per_emotion=2,
        seed=0,
        device="cpu",
    )
    metrics = evaluation.metrics
    assert {
        "test_emotion_acc_real",
        "test_emotion_acc_recon",
        "test_emotion_acc_drop",
        "test_latent_silhouette",
        "test_fd_recon",
        "judge_test_acc",
        "judge_test_uar",
    } <= set(metrics)
    assert metrics["test_emotion_acc_real"] == pytest.approx(metrics["judge_test_acc"])
    written = json.loads((tmp_path / "evaluation" / EMOTION_METRICS_FILE).read_text())
    assert set(written) == set(metrics)
    assert sweep["judge_file"].stat().st_mtime_ns == sweep["mtime"]  # the cached judge is reused
    assert counter.calls == 0  # the finaliser's emotion metrics train no judge
    if conditional:
        assert {"gen_emotion_acc", "gen_fd", "gen_diversity_ratio", "test_conversion_acc"} <= set(
            metrics
        )
        assert 0.0 <= metrics["test_conversion_acc"] <= 1.0
        assert evaluation.confusion == tmp_path / "evaluation" / CONFUSION_FILE
        assert evaluation.confusion.read_bytes()[:8] == PNG_SIGNATURE
    else:
        assert not any(k.startswith(("gen_", "test_conversion")) for k in metrics)
        assert evaluation.confusion is None
