"""MLflow pyfunc model (models-from-code) for mlcore's ThreeLayerConvNet.

Input: images (N, C, H, W) preprocessed as the training data was (mean image subtracted);
the logged signature enforces that shape. Output: predicted class labels. Parameters come from an
``.npz`` of plain arrays loaded without pickle; the maths is mlcore's.
"""

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

from mlcore.nn.cnn import ThreeLayerConvNet


class ConvNetPyfunc(PythonModel):
    def load_context(self, context):
        with np.load(context.artifacts["weights"], allow_pickle=False) as f:
            params = {k: f[k] for k in f.files if k != "input_dim"}
            self.model = ThreeLayerConvNet.from_params(params, f["input_dim"])

    def predict(self, context, model_input: np.ndarray, params=None):
        return self.model.predict(np.asarray(model_input, dtype=self.model.dtype))


MODEL_CLASS = ConvNetPyfunc
mlflow.models.set_model(MODEL_CLASS())
