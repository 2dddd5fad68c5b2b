"""The DVD weights API under its first name; the code lives in ``dvd_ros.model.weights``.

Kept so that ``from dvd_ros.model.checkpoint import load_models`` (and every other public
name) goes on working.
"""

from dvd_ros.model.weights import *  # noqa: F401,F403
from dvd_ros.model.weights import __all__  # noqa: F401
