"""Ray Tune + Optuna + ASHA sweeps of the emovae trainer, tracked in MLflow.

Data flow: search space YAML (space) -> Ray trial (trainable) -> MLflow runs logged by the
driver (tracking) -> finaliser (finaliser: retrain best config, evaluate, export samples, report).
"""
