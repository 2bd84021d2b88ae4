"""Finalise a finished (or resumed) sweep on its own: retrain the best configuration, evaluate
it on the held-out test speakers, export samples, write the report, register the model.

    python sweeps/finalise.py --sweep runs/quick
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emovae.checkpoint import CheckpointError
from emovae.config import ConfigError
from emovae.data.corpus import CorpusError
from emovae.features import AudioError
from sweeps.finaliser import finalise
from sweeps.tracking import TrackingError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sweep", type=Path, required=True, help="the sweep folder (--out of run.py)"
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    args = parser.parse_args(argv)
    try:
        final = finalise(args.sweep, device=args.device, progress=True)
    except (ConfigError, CorpusError, AudioError, CheckpointError, TrackingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_final(final)
    return 0


# (key, label, unit) of the reconstruction line.
RECONSTRUCTION = (
    ("test_recon", "MSE", ""),
    ("test_lsd_db", "LSD", " dB"),
    ("test_snr_db", "SNR", " dB"),
    ("test_spectral_convergence", "spectral convergence", ""),
    ("test_latent_silhouette", "latent silhouette by emotion", ""),
)
# (accuracy key, Fréchet distance key, label) of the emotion lines.
EMOTION_ROWS = (
    ("test_emotion_acc_recon", "test_fd_recon", "reconstructions (label withheld)"),
    ("gen_emotion_acc", "gen_fd", "samples (emotion asked for)"),
    ("test_conversion_acc", None, "conversions (neutral -> asked)"),
)


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def final_lines(final) -> list[str]:  # noqa: ANN001 - sweeps.finaliser.FinalResult
    """The final model's figures, grouped, a line each; every metric is in the report and in
    the MLflow `final` run."""
    m = final.metrics
    keys = ("arch", "latent_dim", "beta", "lr", "grad_clip", "batch_size", "max_epochs")
    lines = ["Final model: " + " ".join(f"{k}={_fmt_param(final.config[k])}" for k in keys)]
    recon = [f"{label} {_fmt(m[k])}{unit}" for k, label, unit in RECONSTRUCTION if k in m]
    if recon:
        lines.append("Reconstruction, held-out speakers (log-mels): " + ", ".join(recon))
    real = m.get("judge_test_acc", m.get("test_emotion_acc_real"))
    rows = [row for row in EMOTION_ROWS if row[0] in m]
    if rows and real is not None:
        lines.append(f"Emotion judge on log-mels (its accuracy on the real test clips: {real:.3f})")
        for acc_key, fd_key, label in rows:
            ratio = f" ({m[acc_key] / real:.2f} x real)" if real else ""
            fd = f", Fréchet distance {_fmt(m[fd_key])}" if fd_key and fd_key in m else ""
            lines.append(f"  {label:34s} accuracy {m[acc_key]:.3f}{ratio}{fd}")
        per_emotion = sorted(k for k in m if k.startswith("gen_emotion_acc_"))
        if per_emotion:
            cells = [f"{k.removeprefix('gen_emotion_acc_')} {m[k]:.2f}" for k in per_emotion]
            lines.append("  samples, accuracy per emotion: " + ", ".join(cells))
    lines += _audio_lines(m)
    lines += [
        f"Checkpoint: {final.checkpoint}",
        f"Samples: {final.samples_manifest}",
        f"Report (every metric): {final.report}",
        f"Registered model: {final.model_uri or 'not registered'}",
    ]
    if final.pareto:
        lines.append(
            f"Other Pareto points retrained ({len(final.pareto)}): {final.pareto[0].parent}/"
        )
    return lines


def _fmt_param(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _audio_lines(m: dict[str, float]) -> list[str]:
    from sweeps.report import AUDIO_COLUMNS, AUDIO_SETS

    sets = [name for name, _ in AUDIO_SETS if f"wav_{name}_dnsmos" in m]
    if not sets:
        return []
    columns = [suffix for suffix, _ in AUDIO_COLUMNS]
    lines = [
        "Exported audio (WAVs read back; the real clips are the ceiling):",
        f"  {'set':8s}" + "".join(f"{c:>11s}" for c in columns),
    ]
    for name in sets:
        cells = [m.get(f"wav_{name}_{c}") for c in columns]
        lines.append(
            f"  {name:8s}" + "".join(f"{'-':>11s}" if v is None else f"{v:>11.3f}" for v in cells)
        )
    gains = sorted(k for k in m if k.startswith("wav_aug_") and k.endswith("gain"))
    if gains:
        cells = [f"{k.removeprefix('wav_aug_').removesuffix('_gain')} {m[k]:+.3f}" for k in gains]
        lines.append("  augmentation gain (real + generated vs real): " + ", ".join(cells))
    controls = sorted(k for k in m if k.startswith("wav_aug_") and k.endswith("_over_control"))
    if controls:
        suffix = "_uar_gain_over_control"
        cells = [f"{k.removeprefix('wav_aug_').removesuffix(suffix)} {m[k]:+.3f}" for k in controls]
        lines.append(
            "  UAR gain over vocoded copies of real clips (real + generated vs real + copies): "
            + ", ".join(cells)
        )
    return lines


def print_final(final) -> None:  # noqa: ANN001 - sweeps.finaliser.FinalResult
    print("\n".join(final_lines(final)))


if __name__ == "__main__":
    raise SystemExit(main())
