"""MLflow pyfunc model (models-from-code) for mlcore's linear regressors.

Input: raw features (m, n) as a DataFrame or array; the model applies the training-set
standardization it was logged with, then the linear model. Parameters come from an ``.npz``
of plain arrays loaded without pickle; the maths is mlcore's.
"""

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

from mlcore.linear import LinearRegression
from mlcore.preprocessing import Standardizer


class LinearRegressionPyfunc(PythonModel):
    def load_context(self, context):
        with np.load(context.artifacts["weights"], allow_pickle=False) as f:
            self.standardizer = Standardizer.from_stats(f["mean"], f["scale"])
            self.model = LinearRegression.from_weights(f["weights"], y_ndim=1)

    def predict(self, context, model_input: np.ndarray, params=None):
        X = np.asarray(model_input, dtype=np.float64)
        return self.model.predict(self.standardizer.transform(X))


MODEL_CLASS = LinearRegressionPyfunc
mlflow.models.set_model(MODEL_CLASS())
