"""Shared fixtures of the inference tests: test models, a multi-endpoint dataset, one real fit.

The theophylline fit (4 chains x 1000 draws after 1000 warm-up, the defaults of `fit`) is made
once per session and shared by the real-data, save/load and CLI tests.
"""

from pathlib import Path

import pytest

import pkpd

HERE = Path(__file__).parent
MODELS = HERE / "models"
DATA = HERE / "data"

#: Seed of the shared theophylline fit (chosen before the first run, never changed).
THEO_SEED = 1


@pytest.fixture(scope="session")
def multi_spec():
    return pkpd.load_model(MODELS / "multi_endpoint.toml")


@pytest.fixture(scope="session")
def multi_cohort():
    return pkpd.read_dataset(DATA / "multi_endpoint.csv")


@pytest.fixture(scope="session")
def theo_fit(tmp_path_factory, request):
    """The theophylline fit with the default sampler and settings, saved to a file.

    Under pytest-xdist every worker has its own session: the first worker fits and saves, the
    others wait on a lock and load the saved fit (the run's shared temporary folder).
    """
    from filelock import FileLock

    from pkpd.inference import fit, load_fit

    worker = getattr(request.config, "workerinput", {}).get("workerid")
    root = tmp_path_factory.getbasetemp()
    if worker is not None:
        root = root.parent  # shared by the workers of this run only
    path = root / "theophylline_fit.nc"
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            return load_fit(path), path
        result = fit("pk_1cmt_oral", "theophylline", seed=THEO_SEED, progressbar=False)
        result.save(path)
    return result, path
