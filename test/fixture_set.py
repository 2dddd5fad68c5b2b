"""Write a golden-format fixture set of other sizes with the project's own writers.

The set has every file and key of ``test/fixtures`` (see its README), but other sizes: by
default LoRA rank 8, 3 DiT blocks of 3 heads (recorded in the file's metadata), a VAE of 12
base channels, 13-frame portrait clips and other window cases. The tensors come from this
project's port (``write_release_checkpoint``, ``load_models``, ``DepthRegressor``,
``stream.windows``, ``stream.align``), so such a set proves that the fixture tests read every
size, rank, alpha and count from the files; the parity with the authors' code is proven by
``test/fixtures``.

Usage: ``python test/fixture_set.py OUT_DIR``, then
``DVD_FIXTURES_DIR=OUT_DIR python -m pytest test/test_checkpoint.py ...``.
"""

import argparse
import itertools
import json
from pathlib import Path
import shutil
import sys

import numpy as np
import torch

GOLDEN = Path(__file__).resolve().parent / 'fixtures'
TARGETS = ['q', 'k', 'v', 'o', 'ffn.0', 'ffn.2']
# Window tables: (frames, window, overlap), other cases than the public set's.
WINDOW_CASES = [(1, 45, 9), (13, 13, 4), (14, 13, 4), (30, 13, 4), (40, 13, 4), (64, 29, 8),
                (100, 29, 8), (7, 5, 1), (25, 5, 0), (90, 45, 9), (120, 33, 12)]
# Stitch cases: name -> (frames, window, overlap, variant, (scale, shift) of window k (cycled),
# noise).
STITCH_CASES = {
    'single_T40_W13_O4': (40, 13, 4, 'single', [(1.0, 0.0), (0.9, 0.03), (1.2, -0.05),
                                                (1.05, 0.01), (0.85, 0.04)], 0.02),
    'single_T70_W29_O8': (70, 29, 8, 'single', [(1.0, 0.0), (1.15, -0.02), (0.95, 0.03)], 0.02),
    'single_T45_W13_O4_clip': (45, 13, 4, 'single', [(1.0, 0.0), (0.25, 0.1), (3.5, -0.2),
                                                     (1.0, 0.0), (0.5, 0.0)], 0.0),
    'eval_T40_W13_O4': (40, 13, 4, 'eval', [(1.0, 0.0), (0.9, 0.03), (1.2, -0.05),
                                            (1.05, 0.01)], 0.02),
}


def _config(dit, vae, rank, alpha, seeds):
    heads, head_dim = dit['num_attention_heads'], dit['attention_head_dim']
    wan = {'dim': heads * head_dim, 'in_dim': dit['in_channels'], 'ffn_dim': dit['ffn_dim'],
           'out_dim': dit['out_channels'], 'text_dim': dit['text_dim'],
           'freq_dim': dit['freq_dim'], 'eps': dit['eps'], 'patch_size': list(dit['patch_size']),
           'num_heads': heads, 'num_layers': dit['num_layers'], 'has_image_input': False}
    from dvd_ros.model import presets
    original_vae = {'dim': vae['base_dim'], **{k: v for k, v in vae.items() if k != 'base_dim'}}
    return {
        'wan_model_kwargs': wan,
        'head_dim': head_dim,
        'lora': {'rank': rank, 'alpha': alpha, 'scaling': alpha / rank, 'target_modules': TARGETS,
                 'adapter_name': 'default',
                 'merge_rule': 'W_merged = W_base + (alpha/rank) * lora_B @ lora_A; '
                               'biases unchanged'},
        'diffusers_equivalent_config': {**dit, 'patch_size': list(dit['patch_size'])},
        'vae': {'VideoVAE_kwargs': original_vae, 'diffusers_AutoencoderKLWan_kwargs': vae,
                'latents_mean': list(presets.LATENTS_MEAN),
                'latents_std': list(presets.LATENTS_STD)},
        'files': {'dvd_tiny_dit.safetensors': 'release layout written by dvd_ros '
                                              'write_release_checkpoint',
                  'dvd_tiny_vae.safetensors': 'original Wan2.1_VAE.pth key layout'},
        'dtype': 'float32',
        'seeds': seeds,
        'denoise_step': presets.TIMESTEP / 1000.0,
        'made_by': 'test/fixture_set.py (dvd_ros port, not the reference implementation)',
    }


def _write_weights(out, dit, vae, rank, seeds):
    """Write the release file and the VAE file; return ``(release path, lora pairs)``."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from dvd_ros.model import checkpoint

    torch.manual_seed(seeds['dit'])
    transformer = WanTransformer3DModel(**dit).eval()
    with torch.no_grad():
        for block in transformer.blocks:  # a random init leaves the modulation near zero
            block.scale_shift_table.normal_(0.0, 0.5)
    lora = {}
    state = transformer.state_dict()
    for name in state:
        wan = checkpoint.dit_name_to_wan(name) or ''
        if wan.startswith('blocks.') and any(wan.endswith(f'.{t}.weight') for t in TARGETS):
            rows, cols = state[name].shape
            lora[name[:-len('.weight')]] = (torch.randn(rank, cols) / cols ** 0.5,
                                            torch.randn(rows, rank) * 0.2 / rank ** 0.5)
    torch.manual_seed(seeds['vae'])
    autoencoder = AutoencoderKLWan(**vae).eval()
    release = checkpoint.write_release_checkpoint(out / 'dvd_tiny_dit.safetensors', transformer,
                                                  vae=autoencoder, lora=lora)
    from safetensors.torch import load_file, save_file
    copy = {k.removeprefix(checkpoint.VAE_MARKER): v for k, v in load_file(str(release)).items()
            if k.startswith(checkpoint.VAE_MARKER)}
    save_file(copy, str(out / 'dvd_tiny_vae.safetensors'), metadata={'format': 'pt'})
    return release, len(lora)


def _dit_io(models, base, lora_models, latents, latents_t1, text_dim, timestep):
    transformer = models.transformer
    context = torch.zeros(1, 512, text_dim)
    captured = {}
    hooks = [transformer.blocks[i].register_forward_hook(
        lambda module, args, output, i=i: captured.__setitem__(f'block_out_{i}', output))
        for i in range(len(transformer.blocks))]
    embedder = transformer.condition_embedder
    hooks.append(embedder.timesteps_proj.register_forward_hook(
        lambda module, args, output: captured.__setitem__('timestep_sinusoid', output)))
    hooks.append(embedder.register_forward_hook(
        lambda module, args, output: captured.update(
            temb=output[0], timestep_proj=output[1].unflatten(1, (6, -1)),
            context_embedded_row=output[2][:, :1])))

    def run(module, x):
        with torch.inference_mode():
            return module(x, timestep, context, return_dict=False)[0]

    io = {'latents': latents, 'latents_t1': latents_t1, 'timestep': timestep,
          'context_shape': torch.tensor(list(context.shape), dtype=torch.int64)}
    io['output'] = run(transformer, latents)
    for hook in hooks:
        hook.remove()
    io.update({k: v.clone() for k, v in captured.items()})
    io['output_t1'] = run(transformer, latents_t1)
    io['output_base_only_no_lora'] = run(base.transformer, latents)
    io['output_lora_unmerged'] = run(lora_models, latents)
    return {k: v.contiguous().float() if v.is_floating_point() else v for k, v in io.items()}


def _unmerged(release, base, rank):
    """Return the base transformer with the file's LoRA as an unmerged peft adapter."""
    from peft import LoraConfig
    from safetensors.torch import load_file

    from dvd_ros.model import checkpoint

    transformer = base.transformer
    targets = ['to_q', 'to_k', 'to_v', 'to_out.0', 'net.0.proj', 'net.2']
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets))
    state = transformer.state_dict()
    for key, value in load_file(str(release)).items():
        name = key.removeprefix(checkpoint.DIT_MARKER)
        if key.startswith(checkpoint.DIT_MARKER) and '.lora_' in name:
            state[checkpoint.dit_name_to_diffusers(name)].copy_(value)
    return transformer


def _vae_io(models, video, image):
    from dvd_ros.model.regressor import DepthRegressor

    backend = DepthRegressor(models, height=16, width=16).backend
    mean, std = backend.mean, backend.std
    with torch.inference_mode():
        mu = models.vae.encode(video).latent_dist.mode()
        latents = (mu - mean) / std
        unclamped = models.vae.decode(latents * std + mean, return_dict=False)[0]
        image_latents = (models.vae.encode(image).latent_dist.mode() - mean) / std
        image_decoded = models.vae.decode(image_latents * std + mean,
                                          return_dict=False)[0].clamp(-1, 1)
    return {'video': video, 'image': image, 'latents': latents, 'latents_unnormalised_mu': mu,
            'decoded': unclamped.clamp(-1, 1), 'decoded_unclamped': unclamped,
            'image_latents': image_latents, 'image_decoded': image_decoded,
            'latents_mean': mean.flatten(), 'latents_std': std.flatten()}


def _e2e_io(models, frames01, single01):
    from dvd_ros.model.regressor import DepthRegressor

    height, width = frames01.shape[-2:]
    regressor = DepthRegressor(models, height=height, width=width)
    backend = regressor.backend
    depth, rgb = regressor.predict_window(frames01, return_rgb=True)
    _, rgb_single = regressor.predict_window(single01, return_rgb=True)
    video = frames01[0].permute(1, 0, 2, 3).unsqueeze(0) * 2 - 1
    rgb_latents = backend.encode(video)
    pred_latents = backend.transform(rgb_latents)
    return {'frames01': frames01, 'frames01_single': single01, 'depth': depth,
            'depth_rgb': rgb, 'depth_rgb_single': rgb_single, 'rgb_latents': rgb_latents,
            'pred_latents': pred_latents, 'pred_decoded': backend.decode(pred_latents)}


def _windows(rng, spatial):
    from dvd_ros.stream.align import REFERENCE_SCALE_CLIP, stitch_offline
    from dvd_ros.stream.windows import eval_windows, offline_windows, pad_length

    index = {'single_video': {}, 'eval_video': {}}
    for total, window, overlap in WINDOW_CASES:
        key = f'T={total},W={window},O={overlap}'
        index['single_video'][key] = [list(w) for w in offline_windows(total, window, overlap)]
        index['eval_video'][key] = [list(w) for w in eval_windows(total, window, overlap)]
    cases, tensors = {}, {}
    for name, (total, window, overlap, variant, affine, noise) in STITCH_CASES.items():
        schedule = offline_windows if variant == 'single' else eval_windows
        wins = schedule(total, window, overlap)
        truth = rng.uniform(0.2, 0.8, (total, *spatial)).astype(np.float32)
        calls, raws = [], []
        for k, ((start, end), (scale, shift)) in enumerate(zip(wins, itertools.cycle(affine))):
            raw = np.repeat((truth[start:end] * scale + shift)[..., None], 3, axis=-1)
            raw = raw + rng.normal(0.0, noise, raw.shape) if noise else raw
            raws.append(raw.astype(np.float32))
            tensors[f'{name}/window_{k}_raw'] = raws[-1][None]
            calls.append({'frames': list(range(start, end)), 'num_frames': end - start,
                          'scale': scale, 'shift': shift})
        stitched = stitch_offline(raws, wins, total=total, scale_clip=(
            REFERENCE_SCALE_CLIP if variant == 'single' else None))
        tensors[f'{name}/stitched'] = stitched[None].astype(np.float32)
        tensors[f'{name}/truth'] = truth
        cases[name] = {'T': total, 'window': window, 'overlap': overlap, 'variant': variant,
                       'window_calls': calls}
    pads = {str(n): pad_length(n) for n in range(1, 18)}
    return {'window_index': index, 'pad_to_4n_plus_1': pads, 'stitch_cases': cases}, tensors


def _save(tensors, path):
    from safetensors.torch import save_file

    # Views of one input (a clip and its first frame) must be separate tensors on disk.
    save_file({k: v.clone().contiguous() for k, v in tensors.items()}, str(path))


def write_fixture_set(out, rank=8, num_layers=3, heads=3, vae_dim=12, frames=13,
                      height=80, width=48, seed=7):
    """Write a complete fixture set into ``out``; return its path.

    :param out: output folder (created).
    :param rank: LoRA rank (alpha = rank, the DVD convention).
    :param num_layers: DiT blocks.
    :param heads: attention heads of 32 channels.
    :param vae_dim: VAE base channels (the Wan2.1 VAE structure, 2 residual blocks a level).
    :param frames: frames of the VAE and end-to-end clips.
    :param height: clip height (multiple of 16).
    :param width: clip width (multiple of 16).
    :param seed: seed of weights and inputs.
    :return: ``Path`` of the folder.
    """
    from safetensors.numpy import save_file as save_numpy
    from safetensors.torch import save_file

    from dvd_ros.model import checkpoint, presets

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dit = {'patch_size': [1, 2, 2], 'num_attention_heads': heads, 'attention_head_dim': 32,
           'in_channels': 16, 'out_channels': 16, 'text_dim': 48, 'freq_dim': 256,
           'ffn_dim': 64 * heads, 'num_layers': num_layers, 'cross_attn_norm': True,
           'qk_norm': 'rms_norm_across_heads', 'eps': 1e-6, 'image_dim': None,
           'added_kv_proj_dim': None, 'rope_max_seq_len': 1024}
    vae = {'base_dim': vae_dim, 'z_dim': 16, 'dim_mult': [1, 2, 4, 4], 'num_res_blocks': 2,
           'attn_scales': [], 'temperal_downsample': [False, True, True], 'dropout': 0.0}
    seeds = {'dit': seed, 'vae': seed + 1}
    (out / 'dvd_tiny_dit_config.json').write_text(
        json.dumps(_config(dit, vae, rank, rank, seeds), indent=1) + '\n')
    shutil.copyfile(GOLDEN / 'dvd_1p3b_checkpoint_keys.json',
                    out / 'dvd_1p3b_checkpoint_keys.json')
    release, _ = _write_weights(out, dit, vae, rank, seeds)
    models = checkpoint.load_models(release)
    base = checkpoint.load_models(release, merge_lora=False)

    generator = torch.Generator().manual_seed(seed + 2)
    latent_frames = (frames - 1) // 4 + 1
    latents = torch.randn(1, 16, latent_frames, height // 8, width // 8, generator=generator)
    timestep = torch.tensor([presets.TIMESTEP])
    unmerged = _unmerged(release, checkpoint.load_models(release, merge_lora=False), rank)
    save_file(_dit_io(models, base, unmerged, latents, latents[:, :, :1].clone(),
                      dit['text_dim'], timestep), str(out / 'dvd_tiny_dit_io.safetensors'))

    video = torch.rand(1, 3, frames, height, width, generator=generator) * 2 - 1
    _save(_vae_io(models, video, video[:, :, :1]), out / 'dvd_tiny_vae_io.safetensors')
    frames01 = torch.rand(1, frames, 3, height, width, generator=generator)
    _save(_e2e_io(models, frames01, frames01[:, :1]), out / 'dvd_tiny_e2e_io.safetensors')

    golden, tensors = _windows(np.random.default_rng(seed), (5, 7))
    (out / 'dvd_sliding_window_golden.json').write_text(json.dumps(golden, indent=1) + '\n')
    save_numpy(tensors, str(out / 'dvd_sliding_window_golden.safetensors'))
    return out


def main(argv=None):
    """Command line: ``fixture_set.py OUT [--rank R] [--layers N] ...``."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('out', type=Path)
    parser.add_argument('--rank', type=int, default=8)
    parser.add_argument('--layers', type=int, default=3)
    parser.add_argument('--frames', type=int, default=13)
    parser.add_argument('--height', type=int, default=80)
    parser.add_argument('--width', type=int, default=48)
    parser.add_argument('--seed', type=int, default=7)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    path = write_fixture_set(args.out, rank=args.rank, num_layers=args.layers,
                             frames=args.frames, height=args.height, width=args.width,
                             seed=args.seed)
    print(f'fixture set written to {path}')
    return 0


if __name__ == '__main__':
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
