"""DVD weights: load, convert, verify and write them (official release files <-> diffusers).

Three on-disk layouts are understood:

- the official release (``model.safetensors`` v1.0, ``dvd_1.1.safetensors`` v1.1):
  ``pipe.dit.*`` (peft LoRA-wrapped Wan DiT, original Wan names) and optionally
  ``pipe.vae.model.*`` (the stock Wan2.1 VAE, original names); anything before the
  ``pipe.dit.`` marker (e.g. ``module.``) is tolerated;
- a Wan2.1 VAE file (``Wan2.1_VAE.pth`` or a ``.safetensors`` in the original or the
  diffusers layout), used when the release file carries no VAE copy;
- the converted folder written by ``save_converted``: ``dvd_ros.json`` + ``transformer/``
  + ``vae/`` in diffusers ``save_pretrained`` layout (safetensors). It is the fast path.

Name mapping follows DVD_SPEC 5.1 (DiT) and 5.3 (VAE); LoRA is merged in float64
(DVD_SPEC 5.2). Modules are built on the meta device and the tensors assigned, so the
weights are held once in memory.

One concern per module: ``names`` (key prefixes, name maps), ``tensor_io`` (safetensors read
and written tensor by tensor, regular files only), ``files`` (weights files, pickle safety,
layouts), ``lora`` (the merge), ``memory`` (returning freed memory to the OS), ``configs``
(kwargs from shapes), ``build`` (modules on the meta device), ``release`` (loading a release
file), ``schema`` (checks of ``dvd_ros.json`` / ``config.json`` values), ``manifest`` (the
converted folder's file list and hashes), ``converted`` (writing and loading that folder),
``loading`` (``load_models``), ``release_writer`` and ``describe``.
"""

from dvd_ros.model.weights.build import build_transformer, build_vae
from dvd_ros.model.weights.configs import infer_dit_config, infer_vae_config
from dvd_ros.model.weights.converted import recommended_window, save_converted
from dvd_ros.model.weights.describe import describe
from dvd_ros.model.weights.files import detect_layout
from dvd_ros.model.weights.loading import load_models
from dvd_ros.model.weights.lora import merge_lora
from dvd_ros.model.weights.models import DVDModels
from dvd_ros.model.weights.names import (
    DEFAULT_WEIGHTS,
    DIT_MARKER,
    DIT_NAME_TABLE,
    FORMAT_VERSION,
    META_FILE,
    META_PREFIX,
    VAE_MARKER,
    dit_name_to_diffusers,
    dit_name_to_wan,
    vae_name_to_diffusers,
    vae_name_to_original,
)
from dvd_ros.model.weights.release_writer import write_release_checkpoint

__all__ = [
    'build_transformer', 'build_vae', 'DEFAULT_WEIGHTS', 'describe', 'detect_layout',
    'DIT_MARKER', 'DIT_NAME_TABLE', 'dit_name_to_diffusers', 'dit_name_to_wan', 'DVDModels',
    'FORMAT_VERSION', 'infer_dit_config', 'infer_vae_config', 'load_models', 'merge_lora',
    'META_FILE', 'META_PREFIX', 'recommended_window', 'save_converted', 'VAE_MARKER',
    'vae_name_to_diffusers', 'vae_name_to_original', 'write_release_checkpoint',
]
