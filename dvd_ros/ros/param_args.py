"""Parameter assignments typed on a command line: ``name:=value`` (ROS) or ``name=value``.

Used by ``dvd-ros run -p`` and the launch files, so a parameter is never dropped silently: an
unknown name is an error that lists the close matches, a value is typed and checked against
the parameter's declaration before any node starts.
"""

import difflib

from dvd_ros.errors import InputError
from dvd_ros.ros.params import SPECS

# Parameters rclpy declares on every node (not in DEPTH_PARAMETERS): name -> default.
BUILTIN_PARAMETERS = {'use_sim_time': False}


def split_assignment(text):
    """Split ``'name:=value'`` or ``'name=value'`` into ``(name, value_text)``.

    :raises InputError: no ``=`` or an empty name.
    """
    name, sep, value = text.partition(':=')
    if not sep:
        name, sep, value = text.partition('=')
    name = name.strip()
    if not sep or not name:
        raise InputError(f'expected NAME:=VALUE or NAME=VALUE, got {text!r} (e.g. '
                         'metric_mode:=fixed)')
    return name, value


def close_matches(name, known, n=3, cutoff=0.6, parts=True):
    """Return up to ``n`` names of ``known`` that look like ``name`` (typos, missing parts).

    :param cutoff: least difflib similarity ratio of a typo.
    :param parts: also names that contain ``name`` (``height`` -> ``model_height``).
    """
    known = sorted(known)
    # A part of a long name first: it is no close match by similarity ratio.
    matches = [k for k in known if parts and len(name) >= 3 and name in k]
    matches += [k for k in difflib.get_close_matches(name, known, n=n, cutoff=cutoff)
                if k not in matches]
    return matches[:n]


def unknown_name_error(name, known, what='depth node parameter'):
    """Return the :class:`InputError` for an unknown ``name``, listing close matches."""
    matches = close_matches(name, known)
    hint = (f'did you mean {", ".join(matches)}?' if matches
            else 'see docs/ros.md for the list')
    return InputError(f'unknown {what} {name!r}: {hint}')


def typed_value(name, text):
    """Return the value of parameter ``name`` parsed from ``text`` and checked.

    YAML typing (``5`` int, ``0.5`` float, ``true`` bool), then the declared type wins: a
    string parameter keeps the text as typed (a path like ``1.1``), an int is accepted for a
    double.

    :raises InputError: the value does not fit the declared type, range or choices.
    """
    import yaml

    spec = SPECS.get(name)
    default = spec.default if spec is not None else BUILTIN_PARAMETERS[name]
    try:
        value = yaml.safe_load(text) if text.strip() else ''
    except yaml.YAMLError:
        value = text
    if isinstance(default, str) and not isinstance(value, str):
        value = text
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not type(default):
        kind = {bool: 'a bool (true/false)', int: 'an integer', float: 'a number'}[type(default)]
        raise InputError(f'parameter {name} must be {kind}, got {text!r}')
    reason = spec.check(value) if spec is not None else None
    if reason:
        raise InputError(f'parameter {reason}')
    return value


def parse_assignments(items, known=None):
    """Turn ``['name:=value', 'name=value', ...]`` into ``{name: typed value}``.

    :param items: the assignments as typed.
    :param known: the accepted names (default: the depth node's parameters and rclpy's
        built-in ones).
    :return: dict in the order given (a later assignment of a name wins).
    :raises InputError: bad syntax, an unknown name (with close matches) or a bad value.
    """
    known = set(SPECS) | set(BUILTIN_PARAMETERS) if known is None else set(known)
    out = {}
    for item in items:
        name, text = split_assignment(item)
        if name not in known:
            raise unknown_name_error(name, known)
        out[name] = typed_value(name, text)
    return out
