"""The finaliser's last step: the retrained model logged with MLflow's PyTorch flavour and a
signature, and registered in the MLflow model registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from emovae.checkpoint import LoadedModel, load_model
from emovae.dataset import PreparedData
from emovae.models import MeanReconstruction
from sweeps.tracking import resolved_uri


class _Registrable(torch.nn.Module):
    """(log-mel (B, 1, n_mels, frames), emotion (B,) int64) -> the reconstruction: the
    interface MLflow's pyfunc serves for a conditional VAE. The emotion is what a conditional
    decoder is told (a model that can withhold it reads -1 as "withheld")."""

    def __init__(self, loaded: LoadedModel):
        super().__init__()
        self.vae = loaded.model

    def forward(self, x: torch.Tensor, emotion: torch.Tensor) -> torch.Tensor:
        labels = emotion
        if self.vae.withheld_label is not None:
            labels = torch.where(emotion < 0, self.vae.withheld_label, emotion)
        return self.vae(x, labels, sample=False)[0]


def register_model(
    tracking_uri: str, run_id: str, checkpoint: Path, data: PreparedData, model_name: str
) -> str:
    """Log the model with MLflow's PyTorch flavour and a signature, and register it.

    An unconditional VAE is registered as its mean reconstruction (log-mel in, log-mel out); a
    conditional one takes a second input, `emotion` (the label index, per clip: see the run's
    `emovae.label_names` tag), named in the signature."""
    import mlflow
    import mlflow.pytorch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    loaded = load_model(checkpoint)
    example = data.test.features[:2]
    shape = (-1, *example.shape[1:])
    if loaded.model.n_classes:
        module = _Registrable(loaded).eval()
        emotion = data.test.labels[:2]
        inputs = Schema(
            [
                TensorSpec(np.dtype(np.float32), shape, "log_mel"),
                TensorSpec(np.dtype(np.int64), (-1,), "emotion"),
            ]
        )
        # pt2 traces forward() with positional inputs: a tuple, in the schema's order.
        example_inputs: Any = (example.numpy(), emotion.numpy())
        with torch.no_grad():
            output = module(example, emotion)
    else:
        module = MeanReconstruction(loaded.model).eval()
        inputs = Schema([TensorSpec(np.dtype(np.float32), shape, "log_mel")])
        example_inputs = example.numpy()
        with torch.no_grad():
            output = module(example)
    signature = ModelSignature(
        inputs=inputs,
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *output.shape[1:]))]),
    )
    mlflow.set_tracking_uri(resolved_uri(tracking_uri))
    with mlflow.start_run(run_id=run_id):
        mlflow.set_tag("emovae.label_names", ",".join(loaded.label_names))
        info = mlflow.pytorch.log_model(
            module,
            name="model",
            signature=signature,
            input_example=example_inputs,
            # Stated, not inferred: inference imports the world and records torch's "+cpu" tag.
            pip_requirements=[
                f"torch=={torch.__version__.split('+')[0]}",
                f"numpy=={np.__version__}",
            ],
            registered_model_name=model_name,
        )
    return info.model_uri
