"""Shared parts of the offline template tests: a region for SAM's transform, and its output."""

from __future__ import annotations

from typing import Any

import pytest

from tests.template.test_template import _transformed


@pytest.fixture(scope="module", autouse=True)
def _region() -> Any:
    """SAM's translator asks boto3 for a region; offline there is none configured."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        yield


@pytest.fixture(scope="module")
def output() -> dict[str, Any]:
    """The template transformed with the default parameters."""
    return _transformed()
