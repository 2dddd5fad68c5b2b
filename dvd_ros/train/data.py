"""Synthetic training data: banks of rendered clips and image-video joint batch sampling."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dvd_ros.errors import InputError
from dvd_ros.synthetic import SyntheticScene
from dvd_ros.train.targets import normalized_disparity


@dataclass
class ClipBank:
    """Rendered clips: ``rgb`` (N, T, H, W, 3) uint8, ``depth`` (N, T, H, W) float32 metres."""

    rgb: np.ndarray
    depth: np.ndarray
    seeds: np.ndarray  # (N,) scene seed of each clip

    def __len__(self):
        return self.rgb.shape[0]

    def disparity(self, k):
        """Return the (T, H, W) normalised disparity target of clip ``k`` (joint percentiles)."""
        return normalized_disparity(self.depth[k])


def render_bank(seeds, clips_per_seed=4, frames=9, height=64, width=96, stride=2,
                gap=37, progress=False, rich_seeds=(), outdoor_seeds=()):
    """Render ``clips_per_seed`` clips of ``frames`` frames from each scene seed -> ClipBank.

    Clips of one scene start ``gap`` frames apart (different views of the same room).
    ``rich_seeds`` are rendered after ``seeds`` with clutter and photo textures
    (``dvd_ros.train.photos``, needs scikit-image); ``outdoor_seeds`` after those, as outdoor
    scenes with clutter and photo textures (same requirement).
    """
    rich = [int(s) for s in rich_seeds]
    outdoor = [int(s) for s in outdoor_seeds]
    photos = None
    if rich or outdoor:
        from dvd_ros.train.photos import load_photos
        photos = load_photos()
    seeds = [int(s) for s in seeds] + rich + outdoor
    if not seeds or clips_per_seed < 1 or frames < 1:
        raise InputError(f'need seeds, clips_per_seed >= 1 and frames >= 1, got {len(seeds)} '
                         f'seeds, {clips_per_seed}, {frames}')
    rgbs, depths, owners = [], [], []
    iterator = seeds
    if progress:
        from tqdm import tqdm
        iterator = tqdm(seeds, desc='render', unit='scene')
    n_plain = len(seeds) - len(rich) - len(outdoor)
    for n, seed in enumerate(iterator):
        extra = {'clutter': True, 'photos': photos} if n >= n_plain else {}
        if n >= n_plain + len(rich):
            extra['outdoor'] = True
        scene = SyntheticScene(seed, height=height, width=width, **extra)
        for c in range(clips_per_seed):
            rgb, depth = scene.clip(frames, start=c * gap, stride=stride)
            rgbs.append(rgb)
            depths.append(depth)
            owners.append(seed)
    return ClipBank(np.stack(rgbs), np.stack(depths), np.asarray(owners))


def _bank_problem(bank, seeds=(), clips_per_seed=4, frames=9, height=64, width=96,
                  rich_seeds=(), outdoor_seeds=(), **_):
    """Return why ``bank`` is not what ``render_bank`` makes of these arguments, or None."""
    owners = np.repeat([int(s) for s in [*seeds, *rich_seeds, *outdoor_seeds]], clips_per_seed)
    shape = (len(owners), frames, height, width)
    if bank.rgb.shape != (*shape, 3) or bank.depth.shape != shape:
        return (f'it holds clips of shape {bank.rgb.shape[:4]} (clips, frames, height, width), '
                f'these options make {shape}')
    if not np.array_equal(bank.seeds, owners):
        return 'its scene seeds are not the ones these --seeds/--rich-seeds/--outdoor-seeds give'
    return None


def load_or_render_bank(path, **kwargs):
    """Load a cached bank from ``path`` (.npz) or render it with ``render_bank`` and save it.

    A cached bank is used only if its shapes and scene seeds are what ``kwargs`` render (else
    InputError, the file is left alone); a new one is written to a temporary name, read back
    and checked, then moved into place.
    """
    path = Path(path)
    if path.is_file():
        with np.load(path) as z:
            bank = ClipBank(z['rgb'], z['depth'], z['seeds'])
        problem = _bank_problem(bank, **kwargs)
        if problem:
            raise InputError(f'the clip bank {path} does not match this run: {problem}; give '
                             f'--bank a new file name (or the options that made it)')
        return bank
    bank = render_bank(**kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.partial')
    with open(tmp, 'wb') as f:
        np.savez(f, rgb=bank.rgb, depth=bank.depth, seeds=bank.seeds)
    with np.load(tmp) as z:
        written = ClipBank(z['rgb'], z['depth'], z['seeds'])
        if not (np.array_equal(written.seeds, bank.seeds) and np.array_equal(written.rgb, bank.rgb)
                and np.array_equal(written.depth, bank.depth)):
            raise OSError(f'{tmp} does not read back as written; the disk may be full or '
                          'failing (the file was kept for inspection)')
    tmp.replace(path)
    return bank


class JointSampler:
    """Draw image (T = 1) or video batches at random with fixed weights (spec 3.4).

    :param n_clips: number of clips in the bank
    :param clip_frames: frames per clip in the bank
    :param video_frames: frames per video sample (4n + 1, <= clip_frames), or a sequence of
        such lengths drawn uniformly per video batch
    :param image_batch: clips per image batch (one random frame each)
    :param video_batch: clips per video batch
    :param image_weight: probability weight of an image batch (video gets ``1 - image_weight``)
    :param rng: numpy Generator (its state is part of the resumable training state)
    :param image_first_frame: images and videos always start at frame 0 of a clip
        (precomputed latents)
    """

    def __init__(self, n_clips, clip_frames, video_frames=5, image_batch=8, video_batch=2,
                 image_weight=1 / 6, rng=None, image_first_frame=False):
        lengths = tuple(int(v) for v in np.atleast_1d(video_frames))
        if not lengths or any(v % 4 != 1 or v > clip_frames for v in lengths):
            raise InputError(f'video_frames must be 4n+1 and <= {clip_frames}, got '
                             f'{video_frames}')
        self.n_clips, self.clip_frames = n_clips, clip_frames
        self.lengths = lengths
        self.image_batch, self.video_batch = image_batch, video_batch
        self.image_weight = image_weight
        self.image_first_frame = image_first_frame
        self.rng = rng if rng is not None else np.random.default_rng(0)

    def draw(self):
        """Return a list of ``(clip_index, start, length)`` for one batch (equal lengths)."""
        if self.rng.random() < self.image_weight:
            idx = self.rng.integers(self.n_clips, size=self.image_batch)
            starts = self.rng.integers(self.clip_frames, size=self.image_batch)
            if self.image_first_frame:
                starts[:] = 0
            return [(int(i), int(s), 1) for i, s in zip(idx, starts)]
        # A single length draws nothing extra, so such runs keep their exact random stream.
        length = self.lengths[0] if len(self.lengths) == 1 else int(
            self.lengths[int(self.rng.integers(len(self.lengths)))])
        idx = self.rng.integers(self.n_clips, size=self.video_batch)
        starts = self.rng.integers(self.clip_frames - length + 1, size=self.video_batch)
        if self.image_first_frame:
            starts[:] = 0
        return [(int(i), int(s), length) for i, s in zip(idx, starts)]
