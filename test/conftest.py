"""Shared pytest fixtures: the golden fixture directory and environment safety."""

import json
import os
from pathlib import Path
import shutil
import tempfile

import pytest

from dvd_ros.ros.domain import confine_to_loopback

REPO = Path(__file__).resolve().parents[1]

# DDS traffic of any test never leaves loopback (set before rclpy is imported anywhere): our
# Fast DDS profile, every socket on 127.0.0.1.
confine_to_loopback(REPO / 'config' / 'fastdds_localhost.xml', force=True)
# The golden set ships in the repository (test/fixtures/README.md); DVD_FIXTURES_DIR points the
# fixture tests at another set of the same format.
DEFAULT_FIXTURES = REPO / 'test' / 'fixtures'
# The engine cache of a test run is its own (inherited by the processes tests start): tests never
# read or write the user's ~/.cache/dvd_ros, and concurrent runs never share entries.
ENGINE_CACHE = tempfile.mkdtemp(prefix='dvd_ros_test_engines_')
os.environ['DVD_ROS_ENGINE_CACHE'] = ENGINE_CACHE


def pytest_sessionfinish(session, exitstatus):
    """Remove the test run's own engine cache."""
    shutil.rmtree(ENGINE_CACHE, ignore_errors=True)


def fixtures_dir():
    """Return the golden fixture directory (``DVD_FIXTURES_DIR`` or ``test/fixtures``)."""
    return Path(os.environ.get('DVD_FIXTURES_DIR', DEFAULT_FIXTURES))


@pytest.fixture(scope='session')
def fixtures():
    """Directory of the authors' golden tensors; skips the test when it is absent."""
    path = fixtures_dir()
    if not (path / 'dvd_tiny_dit_config.json').is_file():
        pytest.skip(f'golden fixtures not found at {path} (restore test/fixtures from git or '
                    'set DVD_FIXTURES_DIR to a fixture set)')
    return path


@pytest.fixture(scope='session')
def fixture_config(fixtures):
    """Return the tiny model config JSON shipped with the fixtures."""
    return json.loads((fixtures / 'dvd_tiny_dit_config.json').read_text())
