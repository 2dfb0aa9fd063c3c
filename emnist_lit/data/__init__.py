"""EMNIST: NIST's files, batched augmentation, and the LightningDataModule that puts them together."""

from emnist_lit.data.augment import random_affine
from emnist_lit.data.datamodule import EMNISTDataModule, IndexedImages, stratified_split
from emnist_lit.data.nist_files import (
    MAPPING_FILE,
    NIST_ARCHIVE,
    SPLIT_FILES,
    FileSource,
    download_emnist,
    find_emnist_files,
    fix_orientation,
    load_split,
    read_idx,
    read_mapping,
)

__all__ = [
    "MAPPING_FILE",
    "NIST_ARCHIVE",
    "SPLIT_FILES",
    "EMNISTDataModule",
    "FileSource",
    "IndexedImages",
    "download_emnist",
    "find_emnist_files",
    "fix_orientation",
    "load_split",
    "random_affine",
    "read_idx",
    "read_mapping",
    "stratified_split",
]
