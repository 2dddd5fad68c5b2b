"""Summaries of weights files and converted folders, read from headers only."""

import math
from pathlib import Path

from dvd_ros.model.weights.converted import read_meta
from dvd_ros.model.weights.files import TensorFile, detect_layout
from dvd_ros.model.weights.names import (
    DIT_MARKER,
    LORA_SUFFIX,
    VAE_MARKER,
    strip_before,
)
from dvd_ros.model.weights.schema import PARTS
from dvd_ros.model.weights.tensor_io import dtype_name


def describe(path):
    """Summarise a weights file or converted folder without loading the tensors.

    :return: dict with ``layout``, tensor counts, LoRA rank, dtypes, size in bytes.
    """
    path = Path(path)
    layout = detect_layout(path)
    if layout == 'converted':
        meta = read_meta(path)
        counts, dtypes = dict.fromkeys(PARTS, 0), set()
        for name in meta['files']:
            if name.endswith('.safetensors'):
                with TensorFile(path / name) as tensor_file:
                    counts[name.split('/')[0]] += len(tensor_file.shapes)
                    dtypes.update(dtype_name(d) for d in tensor_file.dtypes.values())
        return {
            'path': str(path), 'layout': layout, 'dit_tensors': counts['transformer'],
            'vae_tensors': counts['vae'], 'lora_rank': meta.get('lora_rank'),
            'lora_alpha': meta.get('lora_alpha'), 'dtypes': sorted(dtypes),
            'size_bytes': sum(entry['size'] for entry in meta['files'].values()),
            'processing_size': [meta.get('height'), meta.get('width')],
            'source': meta.get('source'),
        }
    with TensorFile(path) as tensor_file:
        return _describe_file(path, layout, tensor_file)


def _describe_file(path, layout, tensor_file):
    keys = list(tensor_file.keys())
    dit = strip_before(keys, DIT_MARKER)
    vae = strip_before(keys, VAE_MARKER)
    prefix = sorted({k[:k.find(DIT_MARKER)] for k in keys if DIT_MARKER in k})
    ranks = sorted({tensor_file.shapes[k][0] for n, k in dit.items()
                    if (m := LORA_SUFFIX.match(n)) and m['part'] == 'lora_A'})
    params = sum(math.prod(s) for s in tensor_file.shapes.values())
    vae_count = len(vae) if layout == 'release' else len(keys)
    return {
        'path': str(path),
        'layout': layout,
        'prefix': prefix[0] if prefix else '',
        'dit_tensors': len(dit),
        'lora_pairs': sum(1 for n in dit if n.endswith('.weight') and '.lora_A.' in n),
        'lora_rank': ranks[0] if len(ranks) == 1 else (ranks or None),
        'vae_tensors': vae_count,
        'other_tensors': len(keys) - len(dit) - vae_count,
        'dtypes': sorted({dtype_name(d) for d in tensor_file.dtypes.values()}),
        'parameters': params,
        'size_bytes': tensor_file.size_bytes(),
        'metadata': tensor_file.metadata,
    }
