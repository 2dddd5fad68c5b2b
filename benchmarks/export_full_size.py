"""Export the full-size DVD stages (Wan2.1 1.3B DiT, Wan2.1 VAE) on the CPU, per precision.

What a GPU machine does first for TensorRT, minus the GPU: random weights of the real
architecture, a small window shape (few tokens, so the CPU can trace and run it), each
precision's graph exported through ``cached_onnx`` (so a 1.3B float32 graph goes through
the > 2 GB external-data path), loaded by onnxruntime's CPU provider and compared with
torch on the same input. Reports export time, files and size on disk, Q/DQ pairs, the
largest difference to float32 torch, and the process's peak memory.

    python benchmarks/export_full_size.py                       # ~10 min, ~15 GB RAM
    python benchmarks/export_full_size.py --stages dit --precisions fp32,fp8

Writes ``benchmarks/results/export_full_size.md``.
"""

import argparse
import os
from pathlib import Path
import resource
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))

from report import command_line, write_report  # noqa: E402

from dvd_ros.model import presets  # noqa: E402
from dvd_ros.model.checkpoint import DVDModels  # noqa: E402
from dvd_ros.model.engine_cache import EngineCache  # noqa: E402
from dvd_ros.model.export import (  # noqa: E402
    INPUT_NAMES,
    WindowShape,
    cached_onnx,
    example_input,
    stage_module,
)


def peak_gib():
    """Peak resident memory of this process so far (GiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def build(stage):
    """Random-weight float32 1.3B transformer or Wan2.1 VAE (the other part is a stub)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    torch.manual_seed(0)
    if stage == 'dit':
        transformer = WanTransformer3DModel(**presets.DIT_1P3B).eval()
        # Random init leaves the modulation tables near zero; make them matter.
        with torch.no_grad():
            for block in transformer.blocks:
                block.scale_shift_table.normal_(0, 0.5)
        vae = AutoencoderKLWan(**{**presets.VAE_WAN21, 'base_dim': 8}).eval()  # calibration
    else:
        transformer = None
        vae = AutoencoderKLWan(**presets.VAE_WAN21).eval()
    return DVDModels(transformer, vae, presets.LATENTS_MEAN, presets.LATENTS_STD)


def run_graph(path, stage, x):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    start = time.perf_counter()
    session = ort.InferenceSession(os.fspath(path), options, providers=['CPUExecutionProvider'])
    loaded = time.perf_counter() - start
    out = torch.from_numpy(session.run(None, {INPUT_NAMES[stage]: x.numpy()})[0])
    return out, loaded


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--stages', default='dit,encoder,decoder')
    parser.add_argument('--precisions', default='fp32,fp16,fp8')
    parser.add_argument('--window', type=int, default=5)
    parser.add_argument('--size', type=int, default=32, help='square frame side (pixels)')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--out', type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = WindowShape(args.window, args.size, args.size)
    rows = []
    begin = time.perf_counter()
    for stage in args.stages.split(','):
        models = build(stage)
        module = stage_module(models, stage)
        x = example_input(stage, shape, seed=1)
        with torch.no_grad():
            want = module(x)
        params = sum(p.numel() for p in module.parameters())
        print(f'== {stage}: {params / 1e6:.0f} M parameters, input {tuple(x.shape)}', flush=True)
        for precision in args.precisions.split(','):
            with tempfile.TemporaryDirectory(prefix='dvd-full-') as folder:
                start = time.perf_counter()
                path = cached_onnx(models, stage, shape, EngineCache(folder), weights_id='rnd',
                                   precision=precision)
                seconds = time.perf_counter() - start
                files = sorted(p for p in path.parent.iterdir() if p.name != 'manifest.json')
                size = sum(p.stat().st_size for p in files)
                import onnx

                nodes = [n.op_type for n in onnx.load(os.fspath(path),
                                                      load_external_data=False).graph.node]
                got, loaded = run_graph(path, stage, x)
                error = ((got - want).norm() / want.norm()).item()
            row = {'stage': stage, 'precision': precision, 'export_s': seconds,
                   'files': len(files), 'gib': size / 2**30, 'qdq': nodes.count('QuantizeLinear'),
                   'load_s': loaded, 'error': error, 'peak': peak_gib()}
            rows.append(row)
            print(f'   {precision}: export {seconds:.1f} s, {len(files)} file(s) '
                  f'{row["gib"]:.2f} GiB, {row["qdq"]} Q/DQ pairs, onnxruntime load '
                  f'{loaded:.1f} s, relative error vs float32 torch {error:.2e}, peak '
                  f'{row["peak"]:.1f} GiB', flush=True)
        del models, module
    lines = ['| stage | precision | export (s) | files | size (GiB) | Q/DQ pairs | '
             'onnxruntime load (s) | relative error vs float32 torch | peak RSS so far (GiB) |',
             '|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f'| {r["stage"]} | {r["precision"]} | {r["export_s"]:.1f} | {r["files"]} | '
                     f'{r["gib"]:.2f} | {r["qdq"]} | {r["load_s"]:.1f} | {r["error"]:.2e} | '
                     f'{r["peak"]:.1f} |')
    text = (f'# Full-size DVD stages exported on the CPU (random weights), window '
            f'{shape.tag}\n\ntorch {torch.__version__}, {args.threads} threads; total '
            f'{time.perf_counter() - begin:.0f} s.\nCommand: '
            f'`{command_line("export_full_size.py", argv)}`\n\n' + '\n'.join(lines) + '\n')
    write_report(text, args.out, 'export_full_size')
    return 0


if __name__ == '__main__':
    sys.exit(main())
