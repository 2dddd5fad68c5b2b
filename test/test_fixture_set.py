"""The fixture tests read every size from the files: rerun a subset on a set of other sizes."""

import os
from pathlib import Path
import subprocess
import sys

from fixture_set import write_fixture_set
import pytest
from safetensors import safe_open
import torch

TEST_DIR = Path(__file__).resolve().parent
# One test per kind of number that was once hard-coded (alpha, rank, counts, heads, shapes,
# window tables, two load paths).
SUBSET = [
    'test_checkpoint.py::test_lora_alpha_override_scales_the_delta',
    'test_checkpoint.py::test_describe_release',
    'test_checkpoint.py::test_loaded_meta_describes_the_lora',
    'test_checkpoint.py::test_module_prefixed_copy_loads',
    'test_checkpoint.py::test_convert_then_load_folder_gives_same_outputs',
    'test_checkpoint.py::test_write_release_from_peft_transformer_loads_back',
    'test_checkpoint.py::test_dit_output_matches_reference',
    'test_cli_weights.py::test_info_on_release_file',
    'test_windows.py::test_offline_windows_match_reference_table',
    'test_align.py::test_golden_stitching_all_cases',
    'test_align.py::test_golden_clip_case_needs_the_clip',
    'test_regressor.py::test_end_to_end_matches_reference',
]


@pytest.fixture(scope='module')
def other_set(tmp_path_factory):
    torch.set_num_threads(1)
    return write_fixture_set(tmp_path_factory.mktemp('fixtures'), rank=8, num_layers=3,
                             heads=3, frames=5, height=48, width=32)


def test_other_set_differs_from_the_golden_set(other_set, fixture_config):
    import json

    config = json.loads((other_set / 'dvd_tiny_dit_config.json').read_text())
    for section, key in (('lora', 'rank'), ('wan_model_kwargs', 'num_layers'),
                         ('wan_model_kwargs', 'num_heads')):
        assert config[section][key] != fixture_config[section][key], key
    with safe_open(str(other_set / 'dvd_tiny_e2e_io.safetensors'), 'pt') as handle:
        _, count, _, height, width = handle.get_slice('frames01').get_shape()
    assert height > width  # portrait


@pytest.mark.slow
def test_fixture_tests_pass_on_a_set_of_other_sizes(other_set):
    env = {**os.environ, 'DVD_FIXTURES_DIR': str(other_set)}
    run = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', *SUBSET],
        cwd=TEST_DIR, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    summary = run.stdout.strip().splitlines()[-1]
    assert 'skipped' not in summary and 'passed' in summary, run.stdout[-500:]
