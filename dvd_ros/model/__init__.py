"""DVD model layer: presets, checkpoint loading/conversion, DepthRegressor, backends.

Import the submodules directly (``dvd_ros.model.regressor``); the names below are
resolved lazily so that importing the package does not import diffusers.
"""

import importlib

_LAZY = {
    'DVDModels': 'dvd_ros.model.checkpoint',
    'load_models': 'dvd_ros.model.checkpoint',
    'save_converted': 'dvd_ros.model.checkpoint',
    'write_release_checkpoint': 'dvd_ros.model.checkpoint',
    'DEFAULT_WEIGHTS': 'dvd_ros.model.checkpoint',
    'DepthRegressor': 'dvd_ros.model.regressor',
    'PRESETS': 'dvd_ros.model.presets',
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
