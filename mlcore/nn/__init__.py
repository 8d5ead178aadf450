"""Neural networks in plain numpy, after cs231n assignment 2: layers as forward/backward
function pairs, sandwich layers, update rules, a three-layer ConvNet and a Solver."""

from mlcore.nn.cnn import ThreeLayerConvNet
from mlcore.nn.solver import Solver, TrainingDiverged

__all__ = ["Solver", "ThreeLayerConvNet", "TrainingDiverged"]
