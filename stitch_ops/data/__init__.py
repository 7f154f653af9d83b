"""Data stage: synthetic two-party datasets, converters for real datasets, the six-part split.

Everything here reads or writes nnU-Net v2 *raw* datasets (see :mod:`stitch_ops.data.raw`):

- :func:`generate_pair` -- the embedded default: two parties with a real domain shift;
- :func:`convert_kvasir`, :func:`convert_cvc_clinicdb`, :func:`convert_nifti_folder` -- public data;
- :func:`validate_raw_dataset`, :func:`check_compatible` -- user-supplied raw datasets;
- :func:`split_raw_dataset` -- the paper's protocol (five CV parts + a test part).
"""

from stitch_ops.data.converters import convert_cvc_clinicdb, convert_kvasir, convert_nifti_folder
from stitch_ops.data.raw import DatasetError, RawDatasetInfo, check_compatible, validate_raw_dataset
from stitch_ops.data.splits import (
    Fold,
    SplitMethod,
    SplitRecord,
    bin_covering_split,
    read_split_record,
    six_part_split,
    split_raw_dataset,
)
from stitch_ops.data.synthetic import PAIRS, generate_pair

__all__ = [
    "PAIRS",
    "DatasetError",
    "Fold",
    "RawDatasetInfo",
    "SplitMethod",
    "SplitRecord",
    "bin_covering_split",
    "check_compatible",
    "convert_cvc_clinicdb",
    "convert_kvasir",
    "convert_nifti_folder",
    "generate_pair",
    "read_split_record",
    "six_part_split",
    "split_raw_dataset",
    "validate_raw_dataset",
]
