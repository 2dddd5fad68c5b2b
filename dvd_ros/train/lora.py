"""LoRA on the diffusers Wan DiT via peft, with the DVD targets (spec 3.3)."""

import torch

from dvd_ros.errors import InputError

# Spec names (DiffSynth / original Wan) -> diffusers WanTransformer3DModel module suffixes.
# q, k, v, o of self_attn / cross_attn are attn1 / attn2 .to_q/.to_k/.to_v/.to_out.0;
# ffn.0 / ffn.2 are ffn.net.0.proj / ffn.net.2. peft matches by module-name suffix.
SPEC_TARGETS = ('q', 'k', 'v', 'o', 'ffn.0', 'ffn.2')
DIFFUSERS_TARGETS = ('to_q', 'to_k', 'to_v', 'to_out.0', 'ffn.net.0.proj', 'ffn.net.2')
ADAPTER = 'default'


def add_lora(transformer, rank=512, alpha=None, freeze_base=True):
    """Inject LoRA adapters into the DiT in place and freeze everything else.

    Rank/alpha default to the reference (512/512, scaling 1); dropout 0, no bias, A
    Kaiming-uniform, B zeros, adapter name ``default``. Ten Linears per block are wrapped.

    :param transformer: diffusers WanTransformer3DModel
    :param rank: LoRA rank r
    :param alpha: LoRA alpha (default: ``rank``)
    :param freeze_base: freeze all non-LoRA parameters (the reference ``train_all: false``)
    :return: dict ``{'rank', 'alpha', 'targets', 'wrapped'}`` describing the adapters
    """
    from peft import LoraConfig, inject_adapter_in_model

    if int(rank) < 1:
        raise InputError(f'LoRA rank must be >= 1, got {rank}')
    alpha = int(rank) if alpha is None else alpha
    config = LoraConfig(r=int(rank), lora_alpha=alpha, target_modules=list(DIFFUSERS_TARGETS),
                        lora_dropout=0.0, bias='none', init_lora_weights=True)
    inject_adapter_in_model(config, transformer, adapter_name=ADAPTER)
    if freeze_base:
        for name, p in transformer.named_parameters():
            p.requires_grad_('lora_' in name)
    wrapped = sorted({n.rsplit('.lora_A', 1)[0] for n, _ in transformer.named_parameters()
                      if '.lora_A.' in n})
    return {'rank': int(rank), 'alpha': alpha, 'targets': list(DIFFUSERS_TARGETS),
            'wrapped': len(wrapped)}


@torch.no_grad()
def merge_lora(transformer):
    """Fold the adapters into the base Linears (``W += alpha/r * B @ A``) and remove them.

    :return: the plain model (peft wrappers replaced by their merged base layers)
    """
    from peft.tuners.lora import LoraLayer

    for name, module in list(transformer.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge(adapter_names=[ADAPTER])
            parent_name, _, child = name.rpartition('.')
            parent = transformer.get_submodule(parent_name) if parent_name else transformer
            setattr(parent, child, module.get_base_layer())
    return transformer


def lora_state(transformer):
    """Return ``{name: tensor}`` of the LoRA A/B weights only (what training changes)."""
    return {n: p.detach() for n, p in transformer.named_parameters() if 'lora_' in n}
