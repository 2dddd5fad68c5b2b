"""Tests of the trainer: LoRA wrapping, joint batches, resumable state, checkpoint round trip."""

from dataclasses import replace

from diffusers import AutoencoderKLWan, WanTransformer3DModel
import numpy as np
import pytest
import torch

from dvd_ros.errors import InputError
from dvd_ros.model import presets
from dvd_ros.model.checkpoint import load_models
from dvd_ros.train import latent
from dvd_ros.train.data import JointSampler, render_bank
from dvd_ros.train.export import fold_latent_statistics, save_trained
from dvd_ros.train.lora import DIFFUSERS_TARGETS, add_lora, merge_lora
from dvd_ros.train.trainer import LatentBank, TrainConfig, Trainer

DIT = {'patch_size': [1, 2, 2], 'num_attention_heads': 2, 'attention_head_dim': 12,
       'in_channels': 16, 'out_channels': 16, 'text_dim': 8, 'freq_dim': 16, 'ffn_dim': 32,
       'num_layers': 2, 'cross_attn_norm': True, 'qk_norm': 'rms_norm_across_heads'}
VAE = {'base_dim': 4, 'z_dim': 16, 'dim_mult': [1, 2, 2, 2], 'num_res_blocks': 1}


@pytest.fixture(scope='module')
def bank():
    return render_bank([11, 12], clips_per_seed=1, frames=5, height=32, width=32)


def _models(seed=0):
    torch.manual_seed(seed)
    return AutoencoderKLWan(**VAE).eval(), WanTransformer3DModel(**DIT)


def test_lora_wraps_the_spec_layers_and_only_lora_trains():
    _, dit = _models()
    info = add_lora(dit, rank=4)
    assert info['wrapped'] == 10 * DIT['num_layers']  # q, k, v, o x 2 attentions + ffn.0/2
    trainable = [n for n, p in dit.named_parameters() if p.requires_grad]
    assert trainable and all('lora_' in n for n in trainable)
    names = {n.rsplit('.lora_A', 1)[0].split('.', 2)[2] for n in trainable if 'lora_A' in n}
    assert names == {f'attn{i}.{t}' for i in (1, 2) for t in DIFFUSERS_TARGETS[:4]} | {
        'ffn.net.0.proj', 'ffn.net.2'}
    # lora_B starts at zero: the wrapped model computes exactly the base model.
    _, base = _models()
    z = torch.randn(1, 16, 1, 4, 4)
    torch.testing.assert_close(latent.regress(dit, z), latent.regress(base, z))


def test_lora_training_step_changes_only_adapters(bank):
    vae, dit = _models()
    add_lora(dit, rank=4)
    frozen = {n: p.detach().clone() for n, p in dit.named_parameters() if 'lora_' not in n}
    cfg = TrainConfig(stage='dit', steps=2, lr=1e-2, video_frames=5, image_batch=2,
                      video_batch=1)
    trainer = Trainer(cfg, bank, '/nonexistent-unused', vae, dit, presets.LATENTS_MEAN,
                      presets.LATENTS_STD)
    before = {n: p.detach().clone() for n, p in dit.named_parameters() if 'lora_B' in n}
    trainer.train_step()
    trainer.train_step()
    for n, p in dit.named_parameters():
        if n in frozen:
            torch.testing.assert_close(p, frozen[n], rtol=0, atol=0)
    assert any(not torch.equal(p, before[n]) for n, p in dit.named_parameters() if n in before)
    assert all(not p.requires_grad for p in vae.parameters())


def test_merge_lora_keeps_the_function():
    _, dit = _models()
    add_lora(dit, rank=3, alpha=6)
    with torch.no_grad():
        for n, p in dit.named_parameters():
            if 'lora_B' in n:
                p.normal_()
    z = torch.randn(1, 16, 2, 4, 4)
    expected = latent.regress(dit, z)
    merged = merge_lora(dit)
    assert not any('lora' in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(latent.regress(merged, z), expected, rtol=1e-4, atol=1e-5)


def test_joint_sampler_mixes_images_and_videos():
    s = JointSampler(10, 9, video_frames=5, image_batch=4, video_batch=2, image_weight=0.3,
                     rng=np.random.default_rng(1))
    draws = [s.draw() for _ in range(400)]
    images = [d for d in draws if d[0][2] == 1]
    assert 0.2 < len(images) / len(draws) < 0.4
    assert all(len(d) == 4 for d in images)
    videos = [d for d in draws if d[0][2] == 5]
    assert all(len(d) == 2 and all(0 <= st <= 4 for _, st, _ in d) for d in videos)
    with pytest.raises(InputError, match='4n\\+1'):
        JointSampler(10, 9, video_frames=4)


def test_resume_is_bit_exact(bank, tmp_path):
    cfg = TrainConfig(stage='dit', steps=4, lr=1e-3, video_frames=5, image_batch=2,
                      video_batch=1, save_every=2, image_weight=0.5, seed=3)

    def fresh(out):
        vae, dit = _models()
        return Trainer(cfg, bank, out, vae, dit, presets.LATENTS_MEAN, presets.LATENTS_STD)

    torch.manual_seed(5)
    straight = fresh(tmp_path / 'a')
    straight.run(progress=False)
    torch.manual_seed(5)
    first = fresh(tmp_path / 'b')
    first.cfg = replace(cfg, steps=2)
    first.run(progress=False)
    resumed = fresh(tmp_path / 'b')
    resumed.load_state()
    assert resumed.step == 2
    resumed.run(progress=False)
    for (n, p), (_, q) in zip(straight.transformer.named_parameters(),
                              resumed.transformer.named_parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)
    with pytest.raises(InputError, match='no training state'):
        fresh(tmp_path / 'c').load_state()


def test_vae_stage_step_reduces_reconstruction_loss(bank, tmp_path):
    torch.manual_seed(0)
    vae = AutoencoderKLWan(**VAE)
    cfg = TrainConfig(stage='vae', steps=1, lr=3e-3, video_frames=5, image_batch=2,
                      video_batch=1, image_weight=0.0, cosine=False, warmup=0)
    trainer = Trainer(cfg, bank, tmp_path, vae)
    draw = [(0, 0, 5)]
    before, _ = trainer.loss_on(draw)
    for _ in range(5):
        trainer.opt.zero_grad()
        loss, _ = trainer.loss_on(draw)
        loss.backward()
        trainer.opt.step()
    after, _ = trainer.loss_on(draw)
    assert float(after.detach()) < float(before.detach())


def test_fold_latent_statistics_preserves_normalised_latents():
    vae, _ = _models()
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    mean, std = [0.3] * 16, [0.7] * 16
    with torch.no_grad():
        z = latent.encode(vae, x, mean, std)
        y = latent.decode(vae, z, mean, std)
        fold_latent_statistics(vae, mean, std, presets.LATENTS_MEAN, presets.LATENTS_STD)
        z2 = latent.encode(vae, x, presets.LATENTS_MEAN, presets.LATENTS_STD)
        y2 = latent.decode(vae, z2, presets.LATENTS_MEAN, presets.LATENTS_STD)
    torch.testing.assert_close(z2, z, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(y2, y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('use_lora', [False, True])
def test_checkpoint_round_trip_both_layouts(tmp_path, use_lora):
    vae, dit = _models()
    info = None
    if use_lora:
        info = add_lora(dit, rank=4)
        with torch.no_grad():
            for n, p in dit.named_parameters():
                if 'lora_B' in n:
                    p.normal_(std=0.1)
    z = torch.randn(1, 16, 2, 4, 4)
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        expected = latent.regress(dit, z)
        expected_z = latent.encode(vae, x, presets.LATENTS_MEAN, presets.LATENTS_STD)
    paths = save_trained(tmp_path, dit, vae, presets.LATENTS_MEAN, presets.LATENTS_STD,
                         {'height': 32, 'width': 48}, lora=info)
    for path in (paths['converted'], paths['release']):
        models = load_models(path)
        assert (models.meta['height'], models.meta['width']) == (32, 48)
        with torch.no_grad():
            got = latent.regress(models.transformer, z)
            got_z = latent.encode(models.vae, x, models.latents_mean, models.latents_std)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got_z, expected_z, rtol=1e-4, atol=1e-5)


def test_cli_trains_both_stages_and_resumes(tmp_path):
    from dvd_ros.cli.main import main

    common = ['--seeds', '0:1', '--clips-per-seed', '1', '--clip-frames', '5', '--height',
              '32', '--width', '32', '--no-progress', '--save-every', '1']
    assert main(['train', str(tmp_path / 'vae'), '--stage', 'vae', '--steps', '1'] + common) == 0
    assert (tmp_path / 'vae' / 'vae_stage.json').is_file()
    dit = ['train', str(tmp_path / 'dit'), '--stage', 'dit', '--vae', str(tmp_path / 'vae'),
           '--video-frames', '5'] + common
    assert main(dit + ['--steps', '1']) == 0
    assert main(dit + ['--steps', '2', '--resume']) == 0
    state = torch.load(tmp_path / 'dit' / 'state.pt', weights_only=False)
    assert state['step'] == 2
    models = load_models(tmp_path / 'dit' / 'converted')
    assert (models.meta['height'], models.meta['width']) == (32, 32)
    assert models.meta['train']['loss'] == 'full'


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    from dvd_ros.cli.main import main

    assert main(['train', str(tmp_path), '--stage', 'vae', '--seeds', 'a:b']) == 2
    assert main(['train', str(tmp_path), '--stage', 'vae', '--height', '30']) == 2
    assert main(['train', str(tmp_path), '--stage', 'dit']) == 2
    err = capsys.readouterr().err
    assert 'START:STOP' in err and 'multiples of 16' in err and '--vae' in err


def test_mixed_video_lengths_share_one_latent_bank(bank, tmp_path):
    vae, _ = _models()
    lb = LatentBank.encode(vae, bank, presets.LATENTS_MEAN, presets.LATENTS_STD, [1, 5])
    lb.save(tmp_path / 'lat.pt')
    lb = LatentBank.load(tmp_path / 'lat.pt')
    assert {n: v[0].shape[2] for n, v in lb.videos.items()} == {1: 1, 5: 2}
    s = JointSampler(len(bank), 5, video_frames=(1, 5), image_weight=0.0,
                     rng=np.random.default_rng(0), image_first_frame=True)
    lengths = {s.draw()[0][2] for _ in range(20)}
    assert lengths == {1, 5}
    rgb, tgt = lb.batch([(0, 0, 5), (1, 0, 5)])
    assert rgb.shape == tgt.shape == (2, 16, 2, 4, 4)
    # The causal VAE encodes frame 0 alone: image latents are the first video latent frame.
    torch.testing.assert_close(lb.videos[5][0][:, :, :1], lb.videos[1][0], rtol=1e-4,
                               atol=1e-5)


def test_joint_stage_trains_dit_and_decoder_but_not_encoder(bank, tmp_path):
    vae, dit = _models()
    cfg = TrainConfig(stage='joint', steps=2, lr=1e-2, video_frames=5, image_batch=2,
                      video_batch=1, image_weight=0.5, seed=1, pixel_weight=2.0)
    trainer = Trainer(cfg, bank, tmp_path, vae, dit, presets.LATENTS_MEAN, presets.LATENTS_STD)
    before = {n: p.detach().clone() for n, p in vae.named_parameters()}
    dit_before = [p.detach().clone() for p in dit.parameters()]
    logs = trainer.train_step()
    assert logs['pixel'] > 0 and logs['loss'] > logs['mse']
    trainer.train_step()
    for n, p in vae.named_parameters():
        changed = not torch.equal(p, before[n])
        if n.startswith(('encoder.', 'quant_conv.')):
            assert not changed, n
    assert any(not torch.equal(p, before[n]) for n, p in vae.named_parameters()
               if n.startswith('decoder.'))
    assert any(not torch.equal(p, q) for p, q in zip(dit.parameters(), dit_before))
    trainer.save_state()
    assert any(k.startswith('decoder.') for k in torch.load(
        tmp_path / 'state.pt', weights_only=False)['trainable'])


def test_pixel_loss_rewards_sharp_edges():
    from dvd_ros.train.trainer import pixel_loss

    target = torch.zeros(1, 1, 8, 8)
    target[..., 4:] = 1.0
    blurred = target.clone()
    blurred[..., 3] = 0.5
    blurred[..., 4] = 0.5
    assert pixel_loss(target, target) == 0
    assert pixel_loss(blurred, target) > 0


def test_cli_joint_stage_fine_tunes_a_model_end_to_end(tmp_path):
    from dvd_ros.cli.main import main

    vae, dit = _models()
    base = save_trained(tmp_path / 'base', dit, vae, presets.LATENTS_MEAN, presets.LATENTS_STD,
                        {'height': 32, 'width': 32, 'train': {'seed': 0}})['converted']
    common = ['--seeds', '0:1', '--clips-per-seed', '1', '--clip-frames', '5', '--height',
              '32', '--width', '32', '--no-progress', '--video-frames', '5']
    assert main(['train', str(tmp_path / 'j'), '--stage', 'joint'] + common) == 2
    assert main(['train', str(tmp_path / 'j'), '--stage', 'joint', '--base', str(base),
                 '--steps', '1', '--pixel-weight', '0.5'] + common) == 0
    models = load_models(tmp_path / 'j' / 'converted')
    assert models.meta['train']['stage'] == 'joint'
    assert models.meta['train']['pixel_weight'] == 0.5
    assert models.meta['base']['train'] == {'seed': 0}
    # The encoder is the base's (same RGB latents); the DiT and the decoder were trained.
    x = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    before = load_models(base)
    with torch.no_grad():
        torch.testing.assert_close(
            latent.encode(models.vae, x, models.latents_mean, models.latents_std),
            latent.encode(before.vae, x, presets.LATENTS_MEAN, presets.LATENTS_STD))
    for new, old in ((models.transformer, before.transformer),
                     (models.vae.decoder, before.vae.decoder)):
        assert any(not torch.equal(p, q) for p, q in zip(new.parameters(), old.parameters()))
    # Stage dit on a base without LoRA fine-tunes the whole DiT.
    assert main(['train', str(tmp_path / 'd'), '--stage', 'dit', '--base', str(base),
                 '--steps', '1'] + common) == 0
    tuned = load_models(tmp_path / 'd' / 'converted').transformer
    assert any(not torch.equal(p, q) for p, q in zip(tuned.parameters(),
                                                      before.transformer.parameters()))


def test_decoder_stage_trains_only_the_decoder(bank, tmp_path):
    vae, dit = _models()
    cfg = TrainConfig(stage='decoder', steps=2, lr=1e-2, video_frames=5, image_batch=2,
                      video_batch=1, image_weight=0.5, seed=1, pred_fraction=1.0,
                      edge_weight=3.0)
    trainer = Trainer(cfg, bank, tmp_path, vae, dit, presets.LATENTS_MEAN, presets.LATENTS_STD)
    before = {n: p.detach().clone() for n, p in vae.named_parameters()}
    dit_before = {n: p.detach().clone() for n, p in dit.named_parameters()}
    logs = trainer.train_step()
    assert logs['pred_share'] == 1.0 and logs['pixel'] > 0
    trainer.train_step()
    for n, p in vae.named_parameters():
        if n.startswith(('encoder.', 'quant_conv.')):
            assert torch.equal(p, before[n]), n
    assert any(not torch.equal(p, before[n]) for n, p in vae.named_parameters()
               if n.startswith('decoder.'))
    for n, p in dit.named_parameters():  # frozen: the DiT only predicts
        assert torch.equal(p, dit_before[n]), n
    trainer.save_state()
    saved = torch.load(tmp_path / 'state.pt', weights_only=False)['trainable']
    assert saved and all(k.startswith(('decoder.', 'post_quant_conv.')) for k in saved)


def test_decoder_stage_mixes_predictions_and_encoded_targets(bank, tmp_path):
    from dvd_ros.train.trainer import _batch, pixel_loss

    vae, dit = _models()
    cfg = TrainConfig(stage='decoder', steps=1, video_frames=5, image_batch=2, video_batch=1,
                      pred_fraction=0.0)
    trainer = Trainer(cfg, bank, tmp_path, vae, dit, presets.LATENTS_MEAN, presets.LATENTS_STD)
    draw = [(0, 0, 5)]
    z_rgb, z_tgt = trainer.latents.batch(draw)
    # pred_fraction 0: the loss is the decoded encoded target's, whatever the DiT predicts.
    _, tgt = _batch(bank, draw)
    with torch.no_grad():
        expected = pixel_loss(vae.decode(
            z_tgt * latent.stats_like(presets.LATENTS_STD, z_tgt)
            + latent.stats_like(presets.LATENTS_MEAN, z_tgt)).sample.mean(1), tgt[:, 0])
        loss, logs = trainer.loss_on(draw)
    assert logs['pred_share'] == 0.0
    torch.testing.assert_close(loss, expected)
    with pytest.raises(InputError, match='pred_fraction'):
        Trainer(replace(cfg, pred_fraction=1.5), bank, tmp_path, vae, dit,
                presets.LATENTS_MEAN, presets.LATENTS_STD)


def test_pixel_loss_edge_weight_scales_only_the_edge_terms():
    from dvd_ros.train.trainer import pixel_loss

    target = torch.zeros(1, 1, 8, 8)
    target[..., 4:] = 1.0
    flat = torch.full_like(target, 0.5)  # L1 0.5, edge terms: the missing step
    l1 = (flat - target).abs().mean()
    e1, e3 = pixel_loss(flat, target, 1.0), pixel_loss(flat, target, 3.0)
    torch.testing.assert_close(e3 - l1, 3 * (e1 - l1))


def test_cli_outdoor_seeds_are_parsed_tagged_and_recorded(tmp_path, capsys):
    pytest.importorskip('skimage')
    from dvd_ros.cli.main import main

    base = ['--clips-per-seed', '1', '--clip-frames', '5', '--height', '32', '--width', '32',
            '--no-progress', '--steps', '1']
    for bad, message in (('5', '--outdoor-seeds must be START:STOP'),
                         ('7:5', '--outdoor-seeds needs STOP > START')):
        assert main(['train', str(tmp_path / 'x'), '--stage', 'vae', '--outdoor-seeds', bad]
                    + base) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / 'x').exists()
    assert main(['train', str(tmp_path / 'vae'), '--stage', 'vae', '--seeds', '0:1'] + base) == 0
    assert main(['train', str(tmp_path / 'dit'), '--stage', 'dit', '--vae', str(tmp_path / 'vae'),
                 '--seeds', '0:1', '--outdoor-seeds', '3:4', '--video-frames', '5'] + base) == 0
    bank = np.load(tmp_path / 'bank_0_1_out3_4_1x5_32x32.npz')
    np.testing.assert_array_equal(bank['seeds'], [0, 3])
    assert bank['depth'][1].max() > 25.0 > bank['depth'][0].max()  # the outdoor clip: sky
    meta = load_models(tmp_path / 'dit' / 'converted').meta
    assert meta['outdoor_seeds'] == [3, 4] and 'rich_seeds' not in meta


def test_grow_transformer_keeps_the_function_and_the_new_blocks_train(bank):
    from dvd_ros.train.stages import grow_transformer

    vae, dit = _models()
    old_blocks = list(dit.blocks)
    x = torch.randn(1, 16, 2, 4, 4)
    with torch.no_grad():
        before = latent.regress(dit, x)
    n_old, n_new = len(old_blocks), len(old_blocks) + 3
    added = grow_transformer(dit, n_new)
    assert len(dit.blocks) == n_new == dit.config.num_layers
    assert len(added) == n_new - n_old
    # The old blocks keep their order; the new ones sit between them, not all at one end.
    assert [b for b in dit.blocks if any(b is o for o in old_blocks)] == old_blocks
    assert min(added) < n_new - (n_new - n_old)
    with torch.no_grad():
        torch.testing.assert_close(latent.regress(dit, x), before, rtol=0, atol=0)
    # The zeroed output projections of a new block learn; the block then changes the output.
    cfg = TrainConfig(stage='dit', steps=1, lr=1e-2, video_frames=5, image_batch=2,
                      video_batch=1)
    Trainer(cfg, bank, '/nonexistent-unused', vae, dit, presets.LATENTS_MEAN,
            presets.LATENTS_STD).train_step()
    assert all(dit.blocks[k].ffn.net[2].weight.abs().sum() > 0 for k in added)
    with pytest.raises(InputError, match='--dit-layers >= '):
        grow_transformer(dit, n_old)


def test_cli_dit_layers_deepens_the_base_and_records_it(tmp_path, capsys):
    from dvd_ros.cli.main import main

    vae, dit = _models()
    n_old = dit.config.num_layers
    base = save_trained(tmp_path / 'base', dit, vae, presets.LATENTS_MEAN, presets.LATENTS_STD,
                        {'height': 32, 'width': 32, 'train': {'seed': 0}})['converted']
    common = ['--seeds', '0:1', '--clips-per-seed', '1', '--clip-frames', '5', '--height',
              '32', '--width', '32', '--no-progress', '--video-frames', '5', '--steps', '1']
    assert main(['train', str(tmp_path / 'g'), '--stage', 'dit', '--base', str(base),
                 '--dit-layers', str(n_old + 1)] + common) == 0
    models = load_models(tmp_path / 'g' / 'converted')
    assert len(models.transformer.blocks) == n_old + 1
    assert models.meta['dit_grown']['from_layers'] == n_old
    assert len(models.meta['dit_grown']['new_blocks']) == 1
    assert main(['train', str(tmp_path / 'j'), '--stage', 'joint', '--base', str(base),
                 '--dit-layers', str(n_old + 1)] + common) == 2
    assert '--dit-layers' in capsys.readouterr().err


def test_refine_patch_warm_starts_a_finer_token_grid():
    from dvd_ros.train.stages import refine_patch

    _, dit = _models()
    p_t, p_h, p_w = dit.config.patch_size
    # A latent constant over each old patch: the new embedding repeats the old token there.
    coarse = torch.randn(1, 16, 2, 3, 2)
    x = coarse.repeat_interleave(p_h, 3).repeat_interleave(p_w, 4)
    with torch.no_grad():
        old_tokens = dit.patch_embedding(x)
        old_out = dit.proj_out.weight.reshape(p_t, p_h, p_w, 16, -1)
        blocks = [b.ffn.net[0].proj.weight.clone() for b in dit.blocks]
    assert refine_patch(dit) == [p_t, p_h, p_w]
    assert tuple(dit.config.patch_size) == (p_t, 1, 1) == tuple(dit.rope.patch_size)
    with torch.no_grad():
        new_tokens = dit.patch_embedding(x)
        torch.testing.assert_close(new_tokens[..., ::p_h, ::p_w], old_tokens)
        torch.testing.assert_close(dit.proj_out.weight.reshape(p_t, 16, -1),
                                   old_out.mean(dim=(1, 2)))
        # One token per latent pixel, same output shape, blocks untouched.
        assert new_tokens.shape[-2:] == x.shape[-2:]
        assert latent.regress(dit, x).shape == x.shape
    assert all(torch.equal(b.ffn.net[0].proj.weight, w) for b, w in zip(dit.blocks, blocks))
    with pytest.raises(InputError, match='already has a 1x1 spatial patch'):
        refine_patch(dit)


def test_cli_dit_patch_refines_the_base_and_the_result_loads(tmp_path, capsys):
    from dvd_ros.cli.main import main

    vae, dit = _models()
    base = save_trained(tmp_path / 'base', dit, vae, presets.LATENTS_MEAN, presets.LATENTS_STD,
                        {'height': 32, 'width': 32, 'train': {'seed': 0}})['converted']
    common = ['--seeds', '0:1', '--clips-per-seed', '1', '--clip-frames', '5', '--height',
              '32', '--width', '32', '--no-progress', '--video-frames', '5', '--steps', '1']
    assert main(['train', str(tmp_path / 'p'), '--stage', 'dit', '--base', str(base),
                 '--dit-patch', '1'] + common) == 0
    models = load_models(tmp_path / 'p' / 'converted')
    assert tuple(models.transformer.config.patch_size)[1:] == (1, 1)
    assert models.meta['dit_grown']['from_patch'] == list(dit.config.patch_size)
    x = torch.randn(1, 16, 2, 4, 4)
    with torch.no_grad():
        assert latent.regress(models.transformer, x).shape == x.shape
    assert main(['train', str(tmp_path / 'q'), '--stage', 'dit', '--vae', str(tmp_path),
                 '--dit-patch', '1'] + common) == 2
    assert '--dit-patch needs stage dit with --base' in capsys.readouterr().err
    assert not (tmp_path / 'q').exists()


def test_cached_bank_is_used_only_when_it_matches_and_is_left_alone(tmp_path):
    from dvd_ros.train.data import load_or_render_bank

    path = tmp_path / 'bank.npz'
    args = {'seeds': range(11, 12), 'clips_per_seed': 1, 'frames': 5, 'height': 32,
            'width': 32}
    made = load_or_render_bank(path, **args)
    assert not list(tmp_path.glob('*.partial'))
    again = load_or_render_bank(path, **args)
    assert np.array_equal(again.rgb, made.rgb) and np.array_equal(again.seeds, made.seeds)
    data = path.read_bytes()
    for wrong, says in (({**args, 'seeds': range(12, 13)}, 'scene seeds'),
                        ({**args, 'frames': 9}, 'shape'),
                        ({**args, 'clips_per_seed': 2}, 'shape')):
        with pytest.raises(InputError, match=f'does not match this run: .*{says}.*--bank'):
            load_or_render_bank(path, **wrong)
    assert path.read_bytes() == data


def test_latent_cache_is_checked_against_the_bank_and_the_vae(bank, tmp_path):
    vae, _ = _models()
    other, _ = _models(seed=1)
    mean, std = presets.LATENTS_MEAN, presets.LATENTS_STD
    lb = LatentBank.encode(vae, bank, mean, std, [5])
    lb.save(tmp_path / 'lat.pt')
    lb = LatentBank.load(tmp_path / 'lat.pt')
    lb.check(vae, bank, mean, std, 5, 'lat.pt')
    with pytest.raises(InputError, match='does not match clip 0 .* this VAE'):
        lb.check(other, bank, mean, std, 5, 'lat.pt')
    with pytest.raises(InputError, match=r'no \[9\]-frame videos'):
        lb.check(vae, bank, mean, std, [5, 9], 'lat.pt')
    short = LatentBank({5: tuple(v[:1] for v in lb.videos[5])}, lb.target_image[:1])
    with pytest.raises(InputError, match=f'holds \\[1\\] clips, the bank {len(bank)}'):
        short.check(vae, bank, mean, std, 5, 'lat.pt')
    # A clip that was changed after encoding is found too (the last clip is re-encoded).
    changed = LatentBank({5: (lb.videos[5][0], lb.videos[5][1].clone())}, lb.target_image)
    changed.videos[5][1][-1] += 0.1
    with pytest.raises(InputError, match=f'clip {len(bank) - 1}'):
        changed.check(vae, bank, mean, std, 5, 'lat.pt')
