"""Event datasets: read, validate and write NONMEM-style CSV files; bundled datasets.

>>> from pkpd.data import load_dataset, read_dataset
>>> cohort = load_dataset("theophylline")
>>> cohort.n_subjects
12

See ``docs/datasets.md`` for the accepted columns and conventions and ``docs/contracts.md`` for
the layout of `Cohort.ds`.
"""

from pkpd.data.bundled import DATASETS, BundledDataset, list_datasets, load_dataset
from pkpd.data.cohort import Cohort
from pkpd.data.reader import from_dataframe, read_dataset

__all__ = [
    "DATASETS",
    "BundledDataset",
    "Cohort",
    "from_dataframe",
    "list_datasets",
    "load_dataset",
    "read_dataset",
]
