"""mlcore: a from-scratch numpy machine-learning library.

Linear models (closed form, ridge, SGD), a standardizer, metrics, dataset fetching,
and a ConvNet stack (mlcore.nn) with Cython fast layers. Knows nothing of Prefect or MLflow.
"""

__version__ = "0.1.0"
