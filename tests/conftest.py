"""Shared fixtures: paths to the offline datasets, and tiny run configs."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The folder of real datasets in torchvision's layout, when this checkout has one beside it."""
    if not (SHARED_DATA / "FashionMNIST" / "raw").is_dir():
        pytest.skip(f"no offline datasets at {SHARED_DATA}")
    return SHARED_DATA
