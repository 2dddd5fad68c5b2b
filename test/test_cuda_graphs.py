"""CUDA graphs of the torch backend: replay equals eager (CUDA only), option plumbing (CPU)."""

import logging

import pytest
from safetensors.torch import load_file
import torch

from dvd_ros.model import checkpoint
from dvd_ros.model.backends.torch_eager import TorchBackend

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason='CUDA graphs need a CUDA GPU; this torch '
                                f'({torch.__version__}) sees none')


@pytest.fixture(scope='module')
def e2e(fixtures):
    return load_file(str(fixtures / 'dvd_tiny_e2e_io.safetensors'))


def load(fixtures):
    return checkpoint.load_models(fixtures / 'dvd_tiny_dit.safetensors')


def test_option_is_ignored_on_cpu_with_an_info_line(fixtures, caplog):
    with caplog.at_level(logging.INFO, logger='dvd_ros.backends.torch'):
        backend = TorchBackend(load(fixtures), cuda_graphs=True)
    assert backend.graphs is None
    assert any('cuda_graphs ignored on cpu' in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger='dvd_ros.backends.torch'):
        assert TorchBackend(load(fixtures), cuda_graphs=False).graphs is None
    assert not any('cuda_graphs' in r.getMessage() for r in caplog.records)


def test_node_parameter_reaches_the_torch_backend(monkeypatch):
    from dataclasses import replace

    from dvd_ros.model import regressor as regressor_module
    from dvd_ros.ros import depth_node
    from dvd_ros.ros.params import DepthParams, yaml_defaults

    assert yaml_defaults()['cuda_graphs'] is True
    seen = {}

    def fake_from_pretrained(path, **kwargs):
        seen.update(kwargs)
        return 'regressor'

    monkeypatch.setattr(regressor_module.DepthRegressor, 'from_pretrained',
                        staticmethod(fake_from_pretrained))
    base = replace(DepthParams.defaults(), cpu_threads=1)
    depth_node.build_regressor(replace(base, cuda_graphs=False).validate())
    assert seen['backend'] == 'torch' and seen['cuda_graphs'] is False
    seen.clear()
    depth_node.build_regressor(replace(base, backend='onnxruntime').validate())
    assert 'cuda_graphs' not in seen  # other backends do not take the option


@needs_cuda
def test_replay_equals_eager_on_cuda(fixtures, e2e):
    eager = TorchBackend(load(fixtures), device='cuda', cuda_graphs=False)
    graphed = TorchBackend(load(fixtures), device='cuda', cuda_graphs=True)
    video = e2e['frames01'][0].permute(1, 0, 2, 3).unsqueeze(0) * 2 - 1
    for scale in (1.0, 0.5, 1.0):  # new inputs go through the static buffer; shapes reuse
        x = (video * scale).cuda()
        want = eager.decode(eager.transform(eager.encode(x)))
        latents = graphed.encode(x)
        got = graphed.decode(graphed.transform(latents))
        assert (got - want).abs().max().item() <= 1e-5
    assert len(graphed.graphs.graphs) == 3  # one graph per stage for the one shape
    kept = latents.clone()
    graphed.encode(video.cuda() * 0.25)
    assert torch.equal(kept, latents)  # outputs are copies, not the static buffers
