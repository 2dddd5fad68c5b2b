"""Merging the peft LoRA pairs of the release file into their base weights (DVD_SPEC 5.2)."""

import torch

from dvd_ros.errors import WeightsError
from dvd_ros.model.weights.names import BASE_SUFFIX, LORA_SUFFIX, first_names


def merge_lora(tensors, lora_alpha=None, dtype=torch.float32, merge=True, device=None):
    """Merge peft LoRA pairs into their base weights: ``W + (alpha / r) * B @ A`` in float64.

    :param tensors: callable ``name -> tensor`` plus an iterable of names, given as a
        ``(names, get)`` pair; names are Wan DiT names with the ``pipe.dit.`` prefix removed.
    :param lora_alpha: LoRA alpha; None = the rank of each pair (scale 1, the DVD default).
    :param dtype: dtype of the returned tensors.
    :param merge: False keeps the base weights only (ignores the LoRA; for comparisons).
    :param device: where the float64 products are computed (e.g. a GPU: the 1.3B merge
        takes minutes on two CPU cores); results return to the CPU. None = CPU.
    :return: ``(state, info)``: plain Wan names -> tensors, and ``{'rank', 'alpha',
        'lora_pairs'}``.
    :raises WeightsError: an incomplete LoRA triple or mismatched shapes.
    """
    names, get = tensors
    bases, loras, plain = {}, {}, []
    for name in names:
        match = BASE_SUFFIX.match(name)
        if match:
            bases.setdefault(match['path'], {})[match['param']] = name
            continue
        match = LORA_SUFFIX.match(name)
        if match:
            loras.setdefault(match['path'], {}).setdefault(match['adapter'], {})[
                match['part']] = name
            continue
        plain.append(name)
    state = {name: get(name).to(dtype) for name in plain}
    ranks = set()
    for path, parts in bases.items():
        if 'weight' not in parts:
            raise WeightsError(f'LoRA-wrapped layer {path!r} has no base_layer.weight')
        adapters = loras.get(path, {})
        if len(adapters) > 1:
            raise WeightsError(
                f'layer {path!r} has several LoRA adapters ({", ".join(adapters)}); '
                'the DVD release has exactly one')
        weight = get(parts['weight'])
        if merge and adapters:
            (pair,) = adapters.values()
            if set(pair) != {'lora_A', 'lora_B'}:
                raise WeightsError(f'layer {path!r} has an incomplete LoRA pair: {sorted(pair)}')
            down, up = get(pair['lora_A']), get(pair['lora_B'])
            rank = down.shape[0]
            if up.shape[1] != rank or (up.shape[0], down.shape[1]) != tuple(weight.shape):
                raise WeightsError(
                    f'LoRA shapes of {path!r} do not fit: base {tuple(weight.shape)}, '
                    f'lora_A {tuple(down.shape)}, lora_B {tuple(up.shape)}')
            ranks.add(rank)
            scale = (rank if lora_alpha is None else float(lora_alpha)) / rank
            weight = _merged(weight, up, down, scale, dtype, device)
            del up, down
        else:
            weight = weight.to(dtype)
        state[path + '.weight'] = weight
        del weight
        if 'bias' in parts:
            state[path + '.bias'] = get(parts['bias']).to(dtype)
    orphans = set(loras) - set(bases)
    if orphans:
        raise WeightsError(f'LoRA weights without a base layer: {first_names(orphans)}')
    rank = max(ranks) if ranks else None
    info = {
        'rank': rank if len(ranks) <= 1 else sorted(ranks),
        'alpha': (float(lora_alpha) if lora_alpha is not None else rank) if merge else None,
        'lora_pairs': len([p for p in bases if p in loras]),
        'merged': bool(merge and ranks),
    }
    return state, info


def _merged(weight, up, down, scale, dtype, device):
    """Return ``weight + scale * up @ down`` computed in float64, as a new ``dtype`` tensor.

    One pair at a time: the float64 temporaries (the base and the two factors) live only
    inside this call, so the merge of the 1.3B model never holds more than one layer's.
    """
    on = device or weight.device
    merged = weight.to(on, torch.float64)
    del weight
    merged.addmm_(up.to(on, torch.float64), down.to(on, torch.float64), alpha=scale)
    out = merged.to(dtype)
    del merged
    return out.cpu() if device is not None else out
