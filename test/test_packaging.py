"""Packaging: package.xml lists what the code imports, executables installed once, colcon."""

import ast
import os
from pathlib import Path
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

REPO = Path(__file__).resolve().parents[1]
# Imported module -> its rosdep key (ROS packages keep their name).
PYTHON_KEYS = {'numpy': 'python3-numpy', 'torch': 'python3-torch', 'cv2': 'python3-opencv',
               'yaml': 'python3-yaml', 'tqdm': 'python3-tqdm'}
ROS_PACKAGES = {'rclpy', 'sensor_msgs', 'std_msgs', 'diagnostic_msgs', 'rcl_interfaces',
                'ament_index_python', 'launch', 'launch_ros', 'geometry_msgs',
                'visualization_msgs', 'builtin_interfaces', 'tf2_ros', 'message_filters',
                'cv_bridge', 'image_transport', 'sensor_msgs_py', 'rosbag2_py'}


def _setup_nodes():
    tree = ast.parse((REPO / 'setup.py').read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], 'id', '') == 'NODES':
            return ast.literal_eval(node.value)
    raise AssertionError('NODES not found in setup.py')


def _imported_top_modules():
    found = set()
    for path in list((REPO / 'dvd_ros').rglob('*.py')) + list((REPO / 'launch').glob('*.py')):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split('.')[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split('.')[0])
    return found


def _exec_depends():
    root = ET.parse(REPO / 'package.xml').getroot()
    return {e.text.strip(): e.get('condition') for e in root.findall('exec_depend')}


def test_package_xml_lists_what_is_imported():
    imported = _imported_top_modules()
    depends = _exec_depends()
    needed = {m for m in imported if m in ROS_PACKAGES} | {
        key for module, key in PYTHON_KEYS.items() if module in imported}
    assert needed <= set(depends), needed - set(depends)
    # Nothing listed that no code imports (rviz2 is started by the launch files, optionally).
    unused = {name for name in depends if name != 'rviz2'} - needed
    assert not unused, unused
    assert 'ament_index_python' in depends


def test_rviz2_is_optional():
    condition = _exec_depends()['rviz2']
    assert condition and 'DVD_ROS_WITH_RVIZ' in condition


def test_executables_installed_once():
    nodes = _setup_nodes()
    text = (REPO / 'setup.py').read_text()
    # The nodes are installed as lib/dvd_ros launchers only, not also as console scripts.
    tree = ast.parse(text)
    scripts = next(ast.literal_eval(kw.value)['console_scripts'] for node in ast.walk(tree)
                   if isinstance(node, ast.Call) and getattr(node.func, 'id', '') == 'setup'
                   for kw in node.keywords if kw.arg == 'entry_points')
    assert [s.split('=')[0].strip() for s in scripts] == ['dvd-ros']
    for name, target in nodes.items():
        launcher = (REPO / 'scripts' / 'ros2_run' / name).read_text()
        module, func = target.split(':')
        assert f'from {module} import {func}' in launcher
        assert os.access(REPO / 'scripts' / 'ros2_run' / name, os.X_OK)
    import configparser
    cfg = configparser.ConfigParser()
    cfg.read(REPO / 'setup.cfg')
    assert not cfg.has_section('install') and not cfg.has_section('develop')


@pytest.mark.slow
def test_colcon_build_of_a_workspace(tmp_path):
    """`colcon build` installs launchers, share files and the dvd-ros command, once each."""
    colcon = shutil.which('colcon') or (Path(sys.executable).parent / 'colcon')
    if not Path(colcon).is_file():
        pytest.skip('colcon not installed (pip install colcon-common-extensions)')
    src = tmp_path / 'src' / 'dvd_ros'
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        '.venv', '.git', 'out', 'runs', 'build', 'install', 'log', '__pycache__', 'assets',
        '*.egg-info', '.pytest_cache', '.ruff_cache', '.hypothesis'))
    result = subprocess.run([str(colcon), 'build', '--base-paths', 'src'], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    install = tmp_path / 'install' / 'dvd_ros'
    executables = sorted(p.relative_to(install).as_posix() for p in install.rglob('*')
                         if p.is_file() and os.access(p, os.X_OK)
                         and p.parent.name in ('bin', 'dvd_ros') and p.suffix == '')
    assert executables == ['bin/dvd-ros'] + [f'lib/dvd_ros/{n}' for n in sorted(_setup_nodes())]
    share = install / 'share' / 'dvd_ros'
    for name in ('package.xml', 'launch/depth.launch.py', 'launch/demo.launch.py',
                 'config/depth.yaml', 'config/fastdds_localhost.xml', 'rviz/depth.rviz'):
        assert (share / name).is_file(), name
    assert (install / 'share' / 'ament_index' / 'resource_index' / 'packages' /
            'dvd_ros').is_file()
