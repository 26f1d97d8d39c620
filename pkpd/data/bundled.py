"""Datasets shipped with pkpd.

The files live inside the package (``pkpd/data/datasets/``), so they are found the same way from a
source checkout and from an installed wheel. Adding a dataset is one entry in `DATASETS`: put the
CSV file (and a ``.md`` file with its provenance and licence) next to the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from pkpd.data.cohort import Cohort
from pkpd.errors import DatasetError, Problem


@dataclass(frozen=True)
class BundledDataset:
    """One bundled dataset.

    Attributes
    ----------
    filename : str
        CSV file in ``pkpd/data/datasets/``.
    time_unit : str
        Unit of its TIME column (pint unit string).
    description : str
        One line saying what the data are.
    """

    filename: str
    time_unit: str
    description: str


#: Registry of bundled datasets: name -> file, time unit, description.
DATASETS: dict[str, BundledDataset] = {
    "theophylline": BundledDataset(
        filename="theophylline.csv",
        time_unit="h",
        description=(
            "Theophylline, single oral dose, 12 subjects x 11 serum concentrations (mg/L); "
            "dose in mg into CMT 1 (depot), observations CMT 2, covariate WT (kg). Real data, "
            "R datasets::Theoph (GPL); see theophylline.md"
        ),
    ),
    "virtual_cart": BundledDataset(
        filename="virtual_cart.csv",
        time_unit="day",
        description=(
            "SYNTHETIC: 60 virtual CAR-T patients simulated with the cart_crs library model "
            "(seed 2024): CAR-T counts, IL-6, IL-1, CRP, NET marker, daily CRS/ICANS grades, "
            "rescue tocilizumab/dexamethasone doses; covariates TUMOR, WT, NETP, PRODUCT. "
            "Not patient data; see virtual_cart.md"
        ),
    ),
}


def list_datasets() -> list[str]:
    """Names of the bundled datasets.

    Returns
    -------
    list of str
        Sorted names accepted by `load_dataset`; `DATASETS` has their descriptions.
    """
    return sorted(DATASETS)


def load_dataset(name: str) -> Cohort:
    """Load a bundled dataset.

    Parameters
    ----------
    name : str
        One of `list_datasets`.

    Returns
    -------
    Cohort
        The dataset, with its time unit set and ``source`` equal to ``name``.

    Raises
    ------
    DatasetError
        If no bundled dataset has this name.
    """
    from pkpd.data.reader import _read_bytes

    entry = DATASETS.get(name)
    if entry is None:
        raise DatasetError(
            Problem(f"no bundled dataset {name!r}; available: {', '.join(list_datasets())}")
        )
    data = (resources.files("pkpd.data") / "datasets" / entry.filename).read_bytes()
    return _read_bytes(data, source=name, time_unit=entry.time_unit, covariates=None)
