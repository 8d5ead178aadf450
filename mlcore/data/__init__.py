"""Datasets: a registry of checksummed files, fetching with pooch, parsers and the course splits."""

from mlcore.data.images import (
    CIFAR10_CLASSES,
    DIGITS_CLASSES,
    class_names,
    get_cifar10_data,
    load_cifar10,
    load_digits_data,
    load_image_dataset,
)
from mlcore.data.libsvm import get_housing_data, load_libsvm, split_like_course
from mlcore.data.registry import DATASETS, DataError, Dataset, data_dir, fetch, get_dataset

__all__ = [
    "CIFAR10_CLASSES",
    "DIGITS_CLASSES",
    "DATASETS",
    "DataError",
    "Dataset",
    "class_names",
    "data_dir",
    "fetch",
    "get_cifar10_data",
    "get_dataset",
    "get_housing_data",
    "load_cifar10",
    "load_digits_data",
    "load_image_dataset",
    "load_libsvm",
    "split_like_course",
]
