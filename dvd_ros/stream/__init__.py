"""Streaming core (pure numpy): window schedules, alignment, the streaming estimator."""

from dvd_ros.stream.adaptive import OverlapController
from dvd_ros.stream.align import (
    REFERENCE_SCALE_CLIP,
    Alignment,
    apply_alignment,
    clip_scale,
    crossfade,
    crossfade_weights,
    disagreement_confidence,
    fit_scale_shift,
    stitch_offline,
)
from dvd_ros.stream.estimator import (
    DepthFrame,
    OfflineStitcher,
    StreamingDepth,
    StreamStats,
    run_offline,
)
from dvd_ros.stream.pipeline import Pipeline, StreamPipeline
from dvd_ros.stream.windows import (
    CausalWindow,
    causal_tail_window,
    causal_window,
    causal_windows,
    eval_windows,
    offline_windows,
    pad_length,
)

__all__ = [
    'Alignment', 'CausalWindow', 'DepthFrame', 'OfflineStitcher', 'OverlapController',
    'Pipeline', 'REFERENCE_SCALE_CLIP', 'StreamPipeline', 'StreamStats', 'StreamingDepth',
    'apply_alignment', 'causal_tail_window', 'causal_window',
    'causal_windows', 'clip_scale', 'crossfade', 'crossfade_weights', 'disagreement_confidence',
    'eval_windows', 'fit_scale_shift', 'offline_windows', 'pad_length', 'run_offline',
    'stitch_offline',
]
