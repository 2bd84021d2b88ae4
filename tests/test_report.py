"""The sweep report: values, tables, PNGs, ASHA rungs, and edge cases that must not crash it."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from optuna.distributions import CategoricalDistribution

from sweeps.report import analyse_sweep, asha_rungs, build_study, rung_survival, write_report
from sweeps.report_analysis import search_space
from sweeps.report_final import audio_section
from sweeps.space import SPACES_DIR, validate_params
from sweeps.study import search_distributions
from sweeps.trials import TrialRecord, best_value

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
METRIC = "val_recon"
SPEC = {
    "latent_dim": {"choice": [16, 32, 64]},
    "beta": {"loguniform": [1.0e-4, 1.0e-1]},
    "lr": {"loguniform": [1.0e-4, 3.0e-3]},
    "batch_size": {"int": [8, 32]},
    "activation": {"choice": ["relu", "gelu"]},
    "base_channels": 32,  # a constant: not searched, not in the study
}
ASHA = {"grace_period": 2, "reduction_factor": 2, "max_t": 10}


def _history(values: list[float]) -> list[dict[str, float]]:
    rows = []
    for epoch, value in enumerate(values, start=1):
        rows.append(
            {
                "epoch": float(epoch),
                "train_loss": value + 0.5,
                "train_recon": value - 0.05,
                "train_spectral": 0.1,
                "train_kl": 2.0,
                "val_loss": value + 0.6,
                "val_recon": value,
                "val_spectral": 0.1,
                "val_kl": 2.1,
                "lr": 1e-3,
                "beta": 0.01,
                "epoch_seconds": 0.3,
                "is_last_epoch": 0.0,
            }
        )
    return rows


def _records() -> list[TrialRecord]:
    """8 trials: 2 full runs, 5 stopped at rungs 2/4/8, one failed before its first report."""
    rng = np.random.default_rng(0)
    lengths = {
        "t0": (10, "FINISHED"),
        "t1": (2, "KILLED_BY_ASHA"),
        "t2": (4, "KILLED_BY_ASHA"),
        "t3": (2, "KILLED_BY_ASHA"),
        "t4": (10, "FINISHED"),
        "t5": (8, "KILLED_BY_ASHA"),
        "t6": (0, "FAILED"),
        "t7": (2, "KILLED_BY_ASHA"),
    }
    records = []
    for index, (trial_id, (length, status)) in enumerate(lengths.items()):
        start = 1.0 + 0.1 * index
        values = [start * (0.9**e) + 0.01 * rng.random() for e in range(length)]
        params = {
            "latent_dim": np.int64([16, 32, 64][index % 3]),
            "beta": float(10 ** rng.uniform(-4, -1)),
            "lr": float(10 ** rng.uniform(-4, np.log10(3e-3))),
            "batch_size": int(rng.integers(8, 33)),
            "activation": ["relu", "gelu"][index % 2],
        }
        records.append(TrialRecord(trial_id, params, status, _history(values)))
    records[2].history[1]["val_recon"] = math.nan  # a NaN epoch is a missing value
    del records[3].params["lr"]  # a param missing from a record
    records[6].error = "RuntimeError: CUDA out of memory\nTraceback (most recent call last):\n..."
    return records


def _expected_best(records: list[TrialRecord], mode: str) -> tuple[str, float]:
    best_id, best = "", math.inf if mode == "min" else -math.inf
    for record in records:
        if record.status == "FAILED":
            continue
        for row in record.history:
            value = row.get(METRIC)
            if value is None or math.isnan(value):
                continue
            if (value < best) if mode == "min" else (value > best):
                best_id, best = record.trial_id, value
    return best_id, best


def _table_rows(text: str, heading: str) -> list[str]:
    """The data rows of the first table under the heading `heading`."""
    section = re.split(rf"^#+ {re.escape(heading)}.*$", text, flags=re.M)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return rows[2:]  # header and separator


def _linked_images(report: Path) -> list[Path]:
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text())
    return [report.parent / link for link in links]


def _assert_pngs(report: Path) -> list[Path]:
    images = _linked_images(report)
    for image in images:
        assert image.is_file(), image
        assert image.read_bytes()[:8] == PNG_SIGNATURE, image
    return images


def test_best_value_mode_and_nan() -> None:
    record = TrialRecord("a", {}, "FINISHED", _history([0.5, math.nan, 0.2, 0.9]))
    assert best_value(record, METRIC, "min") == pytest.approx(0.2)
    assert best_value(record, METRIC, "max") == pytest.approx(0.9)
    record.history[2][METRIC] = math.inf
    assert best_value(record, METRIC, "min") == pytest.approx(0.5)
    assert best_value(TrialRecord("b", {}, "FAILED", []), METRIC, "min") is None
    only_nan = TrialRecord("c", {}, "FINISHED", _history([math.nan, math.nan]))
    assert best_value(only_nan, METRIC, "max") is None
    assert best_value(record, "not_a_metric", "min") is None
    with pytest.raises(ValueError):
        best_value(record, METRIC, "minimise")


def test_asha_rungs_and_survival() -> None:
    assert asha_rungs(2, 2, 10) == [2, 4, 8, 10]
    assert asha_rungs(5, 3, 45) == [5, 15, 45]
    assert asha_rungs(1, 2, 1) == [1]
    records = [
        TrialRecord(str(i), {}, status, _history([1.0] * n))
        for i, (n, status) in enumerate(
            [
                (10, "FINISHED"),
                (9, "FINISHED"),
                (4, "KILLED_BY_ASHA"),
                (3, "KILLED_BY_ASHA"),
                (2, "KILLED_BY_ASHA"),
                (1, "FAILED"),
                (0, "FAILED"),
            ]
        )
    ]
    # epoch >= rung: 2 -> {10, 9, 4, 3, 2}; 4 -> {10, 9, 4}; 8 -> {10, 9}; 10 -> {10}
    assert rung_survival(records, ASHA) == [(2, 5), (4, 3), (8, 2), (10, 1)]


def test_study_from_records() -> None:
    records = _records()
    study = build_study(records, METRIC, "min", SPEC)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == len(records)
    assert [t.user_attrs["trial_id"] for t in trials] == [r.trial_id for r in records]
    assert trials[6].state.name == "FAIL"
    assert "lr" not in trials[3].params
    assert "base_channels" not in trials[0].params
    assert trials[0].params["latent_dim"] == 16
    best_id, best = _expected_best(records, "min")
    assert study.best_value == pytest.approx(best)
    assert study.best_trial.user_attrs["trial_id"] == best_id


def test_study_space_is_the_searchers() -> None:
    spaces = [SPEC] + [
        validate_params(yaml.safe_load(path.read_text())["params"])
        for path in sorted(SPACES_DIR.glob("*.yaml"))
    ]
    for params in spaces:
        assert search_space(params).distributions == search_distributions(params)
    # Records hold list choices as lists, which Optuna cannot store: the study holds their repr,
    # each once; a spec Ray cannot convert loses only its own plots.
    odd = search_space({"layers": {"choice": [[1, 2], [3], [1, 2]]}, "x": {"normal": [0, 1]}})
    assert odd.distributions == {"layers": CategoricalDistribution(["[1, 2]", "[3]"])}
    assert odd.textual_choices == {"layers"}


def test_full_report(tmp_path: Path) -> None:
    records = _records()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna's ExperimentalWarning must be suppressed
        report = write_report(
            analyse_sweep(records, METRIC, "min", SPEC, ASHA), tmp_path / "out", title="Test"
        )
    assert report == tmp_path / "out" / "report.md"
    text = report.read_text()
    assert text.startswith("# Test\n")
    best_id, best = _expected_best(records, "min")
    assert f"trial `{best_id}`" in text
    assert f"{best:.6g}" in text
    epochs = 10 + 2 + 4 + 2 + 10 + 8 + 0 + 2
    assert f"Epochs trained: {epochs} of a full budget of 80" in text
    assert f"{epochs / 80:.1%}" in text
    assert "2 finished, 5 stopped by ASHA, 1 failed" in text

    top = _table_rows(text, "Best configurations")
    assert len(top) == 5
    assert f"| 1 | {best_id} |" in top[0]
    assert "| t6 |" not in "\n".join(top)  # failed trials are not ranked
    failed = _table_rows(text, "Failed trials")
    assert len(failed) == 1
    assert "CUDA out of memory" in failed[0] and "Traceback" not in failed[0]
    assert len(_table_rows(text, "ASHA rung survival")) == 4
    importance = _table_rows(text, "Hyperparameter importance")
    assert 1 <= len(importance) <= 5

    names = {image.name for image in _assert_pngs(report)}
    assert names == {
        "optimization_history.png",
        "parallel_coordinate.png",
        "param_importances.png",
        "rung_survival.png",
        "best_trial_curves.png",
    }


def test_max_mode_without_searched_params(tmp_path: Path) -> None:
    records = _records()
    report = write_report(analyse_sweep(records, METRIC, "max", {"lr": 1e-3}, ASHA), tmp_path)
    text = report.read_text()
    best_id, best = _expected_best(records, "max")
    assert best_id != _expected_best(records, "min")[0]
    assert f"{METRIC} = {best:.6g} in trial `{best_id}`" in text
    assert "(maximise;" in text
    assert f"| 1 | {best_id} |" in _table_rows(text, "Best configurations (top 5)")[0]
    assert "no parameter was searched" in text
    names = {p.name for p in _assert_pngs(report)}
    assert names == {"optimization_history.png", "rung_survival.png", "best_trial_curves.png"}


def test_all_failed(tmp_path: Path) -> None:
    records = [
        TrialRecord("f0", {"lr": 1e-3}, "FAILED", [], error="ValueError: bad"),
        TrialRecord("f1", {}, "FAILED", [], error=None),
    ]
    report = write_report(analyse_sweep(records, METRIC, "min", SPEC, ASHA), tmp_path)
    text = report.read_text()
    assert "every trial failed" in text
    assert len(_table_rows(text, "Failed trials")) == 2
    assert "no trial completed" in text
    assert "Importance not computed: needs at least 2 completed trials" in text
    assert "no best trial" in text
    # Only the rung chart (all zeros) is drawn.
    assert [p.name for p in _assert_pngs(report)] == ["rung_survival.png"]


def test_single_trial(tmp_path: Path) -> None:
    records = [TrialRecord("only", {"lr": 1e-3}, "FINISHED", _history([0.4, 0.3]))]
    report = write_report(analyse_sweep(records, METRIC, "min", SPEC, ASHA), tmp_path)
    text = report.read_text()
    assert "trial `only`" in text
    assert len(_table_rows(text, "Best configurations")) == 1
    assert "_Not drawn: needs at least 2 completed trials" in text
    assert "Importance not computed" in text
    names = {p.name for p in _assert_pngs(report)}
    assert names == {"optimization_history.png", "rung_survival.png", "best_trial_curves.png"}


def test_no_variation_and_odd_choices(tmp_path: Path) -> None:
    spec = {"layers": {"choice": [[1, 2], [3]]}, "lr": {"loguniform": [1e-4, 1e-2]}}
    records = [
        TrialRecord(
            f"t{i}",
            {"layers": [1, 2], "lr": 1e-3, "bogus": "x|y"},
            "FINISHED",
            _history([0.5 - 0.1 * i]),
        )
        for i in range(3)
    ]
    report = write_report(analyse_sweep(records, METRIC, "max", spec, ASHA), tmp_path)
    text = report.read_text()
    assert "no searched parameter takes more than one value" in text
    assert "x\\|y" in text  # a pipe in a value does not break the table
    assert len(_table_rows(text, "Best configurations")) == 3
    _assert_pngs(report)


def test_final_section(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    (out / "final").mkdir(parents=True)
    curves = elsewhere / "curves.png"
    inside = out / "final" / "recon.png"
    for path in (curves, inside):
        path.write_bytes(PNG_SIGNATURE + b"rest")
    final = {
        "config": {"latent_dim": 32, "lr": 1e-3},
        "metrics": {"test_recon": 0.123, "test_kl": 4.5},
        "learning_curves": str(curves),
        "reconstructions": inside,
        "latent_pca": elsewhere / "missing.png",
    }
    records = [TrialRecord("only", {"lr": 1e-3}, "FINISHED", _history([0.4, 0.3]))]
    report = write_report(analyse_sweep(records, METRIC, "min", SPEC, ASHA), out, final=final)
    text = report.read_text()
    assert len(_table_rows(text, "Configuration")) == 2
    assert len(_table_rows(text, "Test metrics")) == 2
    assert "| test_recon | 0.123 |" in text
    assert "(final_learning_curves.png)" in text
    assert "(final/recon.png)" in text
    assert "image not found" in text
    _assert_pngs(report)


def _final_with(emotion: dict | None) -> dict:
    final = {"config": {"latent_dim": 32}, "metrics": {"test_recon": 0.1}}
    return final if emotion is None else final | {"emotion": emotion}


def test_emotion_section_of_a_conditional_vae(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    confusion = elsewhere / "emotion_confusion.png"
    confusion.write_bytes(PNG_SIGNATURE + b"rest")
    metrics = {
        "test_emotion_acc_real": 0.8,
        "test_emotion_acc_recon": 0.5,
        "test_emotion_acc_drop": 0.3,
        "test_latent_silhouette": math.nan,
        "test_fd_recon": 12.5,
        "judge_test_acc": 0.8,
        "judge_test_uar": 0.75,
        "gen_emotion_acc": 0.25,
        "gen_emotion_acc_anger": 0.5,
        "real_diversity": 3.0,
        "aug_acc_gain": -0.02,
        "something_new": 1.0,
    }
    records = [TrialRecord("only", {"lr": 1e-3}, "FINISHED", _history([0.4, 0.3]))]
    out = tmp_path / "out"
    final = _final_with({"metrics": metrics, "confusion": confusion})
    report = write_report(analyse_sweep(records, METRIC, "min", SPEC, ASHA), out, final=final)
    text = report.read_text()
    assert "### Emotion preservation" in text
    # The section comes after the final model's own tables.
    assert text.index("### Test metrics") < text.index("### Emotion preservation")
    assert _table_rows(text, "Reconstruction") == [
        "| test_emotion_acc_real | 0.8 |",
        "| test_emotion_acc_recon | 0.5 |",
        "| test_emotion_acc_drop | 0.3 |",
        "| test_latent_silhouette | nan |",
        "| test_fd_recon | 12.5 |",
    ]
    assert _table_rows(text, "Judge") == ["| judge_test_acc | 0.8 |", "| judge_test_uar | 0.75 |"]
    assert len(_table_rows(text, "Generation")) == 3  # gen_* and real_*
    assert _table_rows(text, "Augmentation value") == ["| aug_acc_gain | -0.02 |"]
    assert _table_rows(text, "Other") == ["| something_new | 1 |"]  # nothing is dropped
    assert "(final_emotion_confusion.png)" in text
    images = _assert_pngs(report)
    assert out / "final_emotion_confusion.png" in images


def test_emotion_section_of_an_unconditional_vae_and_without_one(tmp_path: Path) -> None:
    records = [TrialRecord("only", {"lr": 1e-3}, "FINISHED", _history([0.4, 0.3]))]
    emotion = {"metrics": {"test_emotion_acc_recon": 0.5, "judge_test_acc": 0.8}, "confusion": None}
    report = write_report(
        analyse_sweep(records, METRIC, "min", SPEC, ASHA),
        tmp_path / "a",
        final=_final_with(emotion),
    )
    text = report.read_text()
    assert _table_rows(text, "Reconstruction") == ["| test_emotion_acc_recon | 0.5 |"]
    for absent in ("Generation", "Augmentation value", "confusion", "Other"):
        assert absent not in text
    missing = {"metrics": {}, "confusion": tmp_path / "gone.png"}
    text = write_report(
        analyse_sweep(records, METRIC, "min", SPEC, ASHA),
        tmp_path / "b",
        final=_final_with(missing),
    ).read_text()
    assert "No emotion metrics recorded." in text and "image not found" in text
    text = write_report(
        analyse_sweep(records, METRIC, "min", SPEC, ASHA), tmp_path / "c", final=_final_with(None)
    ).read_text()
    assert "Emotion preservation" not in text


def test_audio_section_tables_dnsmos_by_set_and_emotion() -> None:
    metrics = {
        "wav_real_dnsmos": 2.5,
        "wav_real_dnsmos_sig": 3.0,
        "wav_real_dnsmos_n": 4.0,
        "wav_real_dnsmos_anger": 2.25,
        "wav_real_dnsmos_neutral": 2.75,
        "wav_gen_dnsmos": 2.0,
        "wav_gen_dnsmos_bak": 3.1,
        "wav_gen_dnsmos_neutral": 2.875,
        "wav_gen_dnsmos_anger": 1.125,
    }
    text = "\n".join(audio_section({"metrics": metrics, "vocoder": "hifigan"}))
    by_emotion = text.split("#### DNSMOS overall by emotion")[1]
    assert "| set | anger | neutral |" in by_emotion  # no sig / bak / n columns
    assert "| real test clips (ceiling) | 2.25 | 2.75 |" in by_emotion
    assert "| generated samples (per emotion asked for) | 1.125 | 2.875 |" in by_emotion
    assert "reconstructions" not in by_emotion
    without = "\n".join(audio_section({"metrics": {"wav_real_dnsmos": 2.5}}))
    assert "by emotion" not in without
