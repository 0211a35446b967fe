"""Data set readers: each returns an :class:`ImageDataset` of uint8 images at one storage size."""
from cl_suite.data.cifar import load_cifar10, load_cifar100
from cl_suite.data.digits import load_digits
from cl_suite.data.imagefolder import ImageFolderLayoutError, UnreadableImageError, load_imagefolder
from cl_suite.data.stl10 import load_stl10
from cl_suite.data.synthetic import load_synthetic
from cl_suite.data.types import DatasetNotFoundError, ImageDataset, ImageSplit

__all__ = [
    "DatasetNotFoundError",
    "ImageDataset",
    "ImageFolderLayoutError",
    "ImageSplit",
    "UnreadableImageError",
    "load_cifar10",
    "load_cifar100",
    "load_digits",
    "load_imagefolder",
    "load_stl10",
    "load_synthetic",
]
