"""Datasets: a registry of checksummed files, fetching with pooch, parsers and the course splits."""

from mlcore.data.libsvm import get_housing_data, load_libsvm, split_like_course
from mlcore.data.registry import DATASETS, DataError, Dataset, data_dir, fetch, get_dataset

__all__ = [
    "DATASETS",
    "DataError",
    "Dataset",
    "data_dir",
    "fetch",
    "get_dataset",
    "get_housing_data",
    "load_libsvm",
    "split_like_course",
]
