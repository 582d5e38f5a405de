"""Data: readers, the long-tailed split and the dataset registry."""

from .datasets import (
    DATASETS,
    DatasetInfo,
    ImageSet,
    LTData,
    channel_stats,
    class_groups,
    data_from_record,
    holdout_validation,
    list_datasets,
    load_imagefolder,
    load_lt_data,
)
from .longtail import longtail_counts, longtail_indices

__all__ = [
    "DATASETS", "DatasetInfo", "ImageSet", "LTData", "channel_stats", "class_groups", "data_from_record",
    "load_imagefolder", "list_datasets",
    "holdout_validation", "load_lt_data", "longtail_counts", "longtail_indices",
]
