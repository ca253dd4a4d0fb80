"""CIFAR data for minivit: readers for the official files, a bundled exact subset, downloads,
augmentations and a prefetching loader. Needs only NumPy.

    >>> from minivit.data import load_dataset, CIFARLoader
    >>> ds = load_dataset("cifar10-subset")        # or "cifar10", "cifar100" (downloaded)
    >>> train = CIFARLoader(ds.x_train, ds.y_train, batch_size=128, augment="standard")
"""

from .cifar import (
    CIFAR10_CLASSES,
    DATASETS,
    NUM_CLASSES,
    Dataset,
    DatasetError,
    UnsafePickleError,
    load_cifar10_subset,
    load_dataset,
    read_cifar10,
    read_cifar100,
    restricted_load,
)
from .download import (
    MD5S,
    URLS,
    DownloadError,
    default_data_dir,
    download_cifar,
    download_url,
    md5sum,
)
from .loader import CIFARLoader
from .transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    Compose,
    RandAugment,
    RandomCrop,
    RandomHorizontalFlip,
    cutmix,
    make_augment,
    mixup,
    one_hot,
    standard_augment,
    to_float_nchw,
)

__all__ = [
    "CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD",
    "CIFARLoader", "Compose", "DATASETS", "Dataset", "DatasetError", "DownloadError", "MD5S", "NUM_CLASSES", "RandAugment", "RandomCrop",
    "RandomHorizontalFlip", "URLS", "UnsafePickleError", "cutmix", "default_data_dir",
    "download_cifar", "download_url", "load_cifar10_subset", "load_dataset", "make_augment",
    "md5sum", "mixup", "one_hot", "read_cifar10", "read_cifar100", "restricted_load",
    "standard_augment", "to_float_nchw",
]
