"""The main job: both course experiments and the gradient checks, one after another."""

from __future__ import annotations

from prefect import flow

from flows.convnet import convnet_training
from flows.experiments import PIPELINE
from flows.gradcheck import gradient_check_flow
from flows.housing import housing_regression

D = PIPELINE.defaults()


@flow(name="pipeline", log_prints=True)
def pipeline(convnet_epochs: int = D["convnet_epochs"], seed: int = D["seed"]) -> dict:
    """housing_regression -> gradient_check -> convnet_training on digits (subflows)."""
    return {
        "housing": housing_regression(),
        "gradcheck": gradient_check_flow(),
        "convnet": convnet_training(dataset="digits", epochs=convnet_epochs, seed=seed),
    }
