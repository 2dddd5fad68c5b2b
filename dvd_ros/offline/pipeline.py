"""Offline pipeline: frame source -> regressor windows -> stitching -> metric -> writers.

Non-causal by default (the reference `test_single_video.py` stitching, best quality); with
`causal=True` the frames go through `StreamingDepth` exactly as the ROS node would publish
them.  Frames are handed to the writers as soon as they are final, so memory stays bounded
by one window and an interrupted run keeps every finished frame in valid files.

Start-up is transactional (see `outputs.OutputPlan`): the input/output overlap, the folder
lock, existing outputs, the bag's topics and the MP4 encoder are all checked before the old
outputs this run replaces are removed.
"""

from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from itertools import islice
import math
from pathlib import Path
import signal
import threading
import time

import numpy as np

from dvd_ros.errors import InputError
from dvd_ros.offline import writers as out
from dvd_ros.offline.outputs import OutputPlan
from dvd_ros.offline.sources import SourceEndedEarly, image_namespace

DEFAULT_HFOV_DEG = 60.0


@dataclass(frozen=True)
class OfflineConfig:
    """What to compute and write.

    `metric` is `(a, b)` for depth = 1 / (a * disparity + b) in metres, or None (relative
    disparity only).  `point_stride` subsamples rows and columns of the point clouds.
    """

    out_dir: Path
    outputs: tuple = ('png16',)
    window: int = 81
    overlap: int = 21
    causal: bool = False
    causal_policy: str = 'immediate'
    metric: tuple | None = None
    max_depth: float = math.inf
    max_frames: int | None = None
    hfov_deg: float = DEFAULT_HFOV_DEG
    point_stride: int = 1
    depth_namespace: str | None = None
    overwrite: bool = False
    progress: bool = True
    colormap: str = 'turbo'


@dataclass
class OfflineReport:
    """What a run did: frame counts, time, written files, and anything worth a warning."""

    frames_total: int = 0
    frames_read: int = 0
    frames_written: int = 0
    frames_dropped: int = 0
    windows: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    paths: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    incomplete: str | None = None  # why the source ended before its announced length
    error: str | None = None  # what stopped the run (with the exception that propagates)

    @property
    def fps(self):
        """Return written frames per second of wall time."""
        return self.frames_written / self.seconds if self.seconds > 0 else 0.0

    @property
    def state(self):
        """Return 'interrupted', 'failed', 'incomplete' or 'done' (everything written)."""
        if self.interrupted:
            return 'interrupted'
        if self.incomplete:
            return 'incomplete'
        if self.error:
            return 'failed'
        return 'done'


class _Interrupts:
    """Defer Ctrl-C while a frame is being written, so no file is left half written.

    Outside a critical section SIGINT raises KeyboardInterrupt at once (a long model call
    stops immediately); inside, it is remembered and raised when the section ends.
    """

    def __init__(self):
        self._depth = 0
        self._pending = False
        self._previous = None

    def install(self):
        # Signals can only be handled in the main thread; a process started with SIGINT
        # ignored (nohup, background job) keeps ignoring it.
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            return
        self._previous = signal.signal(signal.SIGINT, self._handle)

    def uninstall(self):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum, frame):
        if self._depth:
            self._pending = True
            return
        raise KeyboardInterrupt

    @contextmanager
    def critical(self):
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if not self._depth and self._pending:
            self._pending = False
            raise KeyboardInterrupt


def check_config(config):
    """Validate the parts of `config` that do not need the source; InputError on bad values."""
    unknown = [k for k in config.outputs if k not in out.OUTPUT_KINDS]
    if unknown or not config.outputs:
        raise InputError(f'unknown output(s) {unknown}; choose any of '
                         f'{",".join(out.OUTPUT_KINDS)}')
    needs_metric = [k for k in config.outputs if k in out.METRIC_OUTPUTS]
    if needs_metric and config.metric is None:
        raise InputError(f'{",".join(needs_metric)} need metric depth; pass --metric-a A '
                         '--metric-b B (depth = 1 / (A * disparity + B) metres) or drop them')
    if config.metric is not None:
        a, b = (float(v) for v in config.metric)
        if not (math.isfinite(a) and a > 0 and math.isfinite(b)):
            raise InputError(f'metric scale must be finite with A > 0, got A={a}, B={b}; fit '
                             'them with `dvd-ros` against a metric reference')
    if config.max_frames is not None and config.max_frames < 1:
        raise InputError(f'--max-frames must be >= 1, got {config.max_frames}')
    if config.point_stride < 1:
        raise InputError(f'--point-stride must be >= 1, got {config.point_stride}')
    if not config.max_depth > 0:
        raise InputError(f'--max-depth must be > 0 metres, got {config.max_depth}')
    from dvd_ros.stream.windows import check_window

    check_window(config.window, config.overlap)


def plan_outputs(config):
    """Return the `OutputPlan` of `config` (the paths the run owns under `out_dir`)."""
    return OutputPlan(config.out_dir, config.outputs)


def check_start(config, input_path):
    """Check what can be checked without the source: config, input/output overlap, outputs.

    Touches nothing (the command line calls it before loading the model); `run_pipeline`
    repeats it under the folder lock.
    """
    check_config(config)
    plan = plan_outputs(config)
    plan.check_input(input_path)
    plan.check_existing(config.overwrite)
    return plan


def _bag_namespace(config, source):
    if config.depth_namespace is not None:
        return config.depth_namespace
    return image_namespace(source.topic) if getattr(source, 'kind', '') == 'bag' else '/camera'


def _preflight(config, source):
    """Writer checks that need the source and must pass before old outputs are removed."""
    if 'bag' in config.outputs and getattr(source, 'kind', '') == 'bag':
        from dvd_ros.offline.sources import open_bag_reader

        reader = open_bag_reader(source.path)
        try:
            out.check_topics_free(reader, out.depth_topics(_bag_namespace(config, source)))
        finally:
            reader.close()
    size = getattr(source, 'size', None)
    if 'mp4' in config.outputs and size is not None:
        probe = Path(config.out_dir) / '.depth.probe.mp4'
        video = out._mp4_writer(probe, source.fps, size)
        try:
            opened = video.isOpened()
        finally:
            video.release()
            probe.unlink(missing_ok=True)
        if not opened:
            raise InputError(f'OpenCV cannot write MP4 {Path(config.out_dir) / "depth.mp4"}: '
                             f'{out.mp4_failure_cause(probe, float(source.fps), size)}')


def _make_writers(config, source, metric):
    root = Path(config.out_dir)
    # The frame table is written last for each frame, so it lists only frames whose files
    # exist (see run_pipeline).
    writers = {}
    try:
        for kind in config.outputs:
            if kind == 'png16':
                writers[kind] = out.Png16Writer(root)
            elif kind == 'npz':
                writers[kind] = out.NpzWriter(root)
            elif kind == 'mp4':
                writers[kind] = out.Mp4Writer(root, source.fps, colormap=config.colormap,
                                              size=getattr(source, 'size', None))
            elif kind == 'ply':
                writers[kind] = out.PlyWriter(root)
            elif kind == 'ply-fused':
                writers[kind] = out.FusedPlyWriter(root)
            elif kind == 'bag':
                is_bag = getattr(source, 'kind', '') == 'bag'
                writers[kind] = out.BagWriter(
                    root / 'bag', storage=source.storage if is_bag else 'mcap',
                    namespace=_bag_namespace(config, source),
                    source_bag=source.path if is_bag else None, metric=metric)
        writers['frames'] = out.FrameTableWriter(root)
    except BaseException:
        # No frame was written yet: drop what the writers made, so the corrected re-run
        # does not stop on 'already exists' (every path was fresh, see OutputPlan).
        try:
            _close_all(writers, complete=False)
        except Exception:  # the first error is the one to report
            pass
        finally:
            for writer in writers.values():
                out.discard_output(writer.path)
        raise
    return writers


def _close_all(writers, complete):
    """Close every writer even if one fails; re-raise the first failure afterwards."""
    first = None
    for writer in writers.values():
        try:
            writer.close(complete)
        except Exception as exc:  # keep closing the others, then report
            first = first or exc
    if first is not None:
        raise first


class _Geometry:
    """Per-frame intrinsics (CameraInfo, else the field of view), cached per CameraInfo."""

    def __init__(self, hfov_deg, notes):
        self.hfov_deg = hfov_deg
        self.notes = notes
        self._info = None
        self._size = None
        self._value = None

    def intrinsics(self, frame, width, height):
        """Return the intrinsics of `frame` at `width` x `height` and whether they are its own.

        :return: (`PinholeIntrinsics`, True when the frame's CameraInfo describes them as is:
            usable K at the same size)
        """
        from dvd_ros.geometry import PinholeIntrinsics

        info = frame.camera_info
        # The CameraInfo object itself is the cache key (an id() could be reused).
        if self._value is not None and info is self._info and self._size == (width, height):
            return self._value
        value, as_is = None, False
        if info is not None:
            try:
                value = PinholeIntrinsics.from_K(np.asarray(info.k, np.float64),
                                                 int(info.width) or width,
                                                 int(info.height) or height)
                as_is = (value.width, value.height) == (width, height)
                if not as_is:
                    value = value.scaled(width, height)
            except InputError as exc:
                note = (f'CameraInfo unusable ({exc}); using a {self.hfov_deg} deg horizontal '
                        'field of view (--hfov)')
                if note not in self.notes:
                    self.notes.append(note)
        if value is None:
            value = PinholeIntrinsics.from_fov(width, height, self.hfov_deg)
        self._info, self._size, self._value = info, (width, height), (value, as_is)
        return value, as_is


def _stitched_offline(regressor, frames, total, config):
    """Yield (index, disparity (H, W) float32) of the reference non-causal stitching."""
    from dvd_ros.stream.estimator import run_offline

    yield from run_offline(regressor, frames, config.window, config.overlap, total=total)


def _stitched_causal(regressor, frames, config, stats_out):
    """Yield (index, disparity) of what the streaming node would publish for these frames."""
    from dvd_ros.stream.estimator import StreamingDepth

    streaming = StreamingDepth(regressor, config.window, config.overlap,
                               policy=config.causal_policy)
    stats_out.append(streaming)
    for index, rgb in enumerate(frames):
        for item in streaming.push(rgb, index):
            yield item.stamp, item.disparity
    for item in streaming.flush():
        yield item.stamp, item.disparity


def run_pipeline(source, regressor, config, progress_file=None):
    """Process every frame of `source` and write the outputs of `config`.

    Start-up checks (input/output overlap, the `out_dir` lock, existing outputs, writer
    preflights) all pass before any old output is removed; see `outputs.OutputPlan`.

    :param source: a frame source (`sources.open_source`): iterable of `SourceFrame`, `len`,
        `fps`
    :param regressor: anything with `predict(uint8 (T, H, W, 3)) -> float32 (T, H, W)`
    :param config: `OfflineConfig`
    :param progress_file: stream of the progress bar (default stderr)
    :return: `OfflineReport` (`state` 'done', or 'incomplete' when the source decoded fewer
        frames than its container lists); on Ctrl-C or an error after the outputs were opened
        they are closed (valid, finished frames only) and the exception propagates with the
        report attached as `exc.report`
    """
    check_config(config)
    plan = plan_outputs(config)
    plan.check_input(getattr(source, 'path', None))
    out.check_output_dir(config.out_dir)
    plan.lock()
    try:
        plan.check_existing(config.overwrite)
        _preflight(config, source)
        # Every start-up check passed: only now do the old outputs go.
        plan.remove_old(config.overwrite)
        return _run(source, regressor, config, progress_file)
    finally:
        plan.unlock()


def _run(source, regressor, config, progress_file):
    from tqdm import tqdm

    metric = config.metric is not None
    total = len(source) if config.max_frames is None else min(len(source), config.max_frames)
    report = OfflineReport(frames_total=total)
    geometry = _Geometry(config.hfov_deg, report.notes)
    needs_points = metric and any(k in config.outputs for k in ('ply', 'ply-fused', 'bag'))
    needs_k = needs_points or any(k in config.outputs for k in ('npz', 'bag'))
    if 'bag' in config.outputs and not metric:
        report.notes.append('no --metric-a/--metric-b: the bag gets depth/disparity and '
                            'depth/camera_info only (no depth/image, depth/points)')
    pending = {}

    def frames():
        iterator = iter(source)
        try:
            for frame in islice(iterator, total):
                pending[frame.index] = frame
                report.frames_read += 1
                yield frame.rgb
        finally:
            # Release the file / bag reader now, not whenever the generator is collected.
            close = getattr(iterator, 'close', None)
            if close is not None:
                close()

    writers = _make_writers(config, source, metric)
    report.paths = {kind: str(writer.path) for kind, writer in writers.items()}
    interrupts = _Interrupts()
    bar = tqdm(total=total, unit='frame', desc='depth', disable=not config.progress,
               file=progress_file, dynamic_ncols=True)
    started = time.perf_counter()
    complete = False
    failed = False
    streaming = []
    results = None
    interrupts.install()
    try:
        if config.causal:
            results = _stitched_causal(_CountingRegressor(regressor, report), frames(), config,
                                       streaming)
        else:
            results = _stitched_offline(_CountingRegressor(regressor, report), frames(), total,
                                        config)
        for index, disparity in results:
            frame = pending.pop(index)
            # Frames the causal estimator dropped never come back; forget them.
            for stale in [i for i in pending if i < index]:
                del pending[stale]
            disparity = np.asarray(disparity, np.float32)
            h, w = frame.rgb.shape[:2]
            if disparity.shape != (h, w):
                raise InputError(f'the regressor returned {disparity.shape} for a {h}x{w} '
                                 'frame; it must return depth at the input resolution')
            result = _result(frame, disparity, config, geometry, needs_k, needs_points)
            with interrupts.critical():
                # `writers` ends with the frame table: a frame is listed in frames.csv only
                # after every other output holds it.
                for writer in writers.values():
                    writer.write(result)
                report.frames_written += 1
            bar.update(1)
        complete = True
    except KeyboardInterrupt as exc:
        failed = True
        report.interrupted = True
        _attach(exc, report)
        raise
    except SourceEndedEarly as exc:
        failed = True
        report.incomplete = str(exc)
        _attach(exc, report)
        raise
    except Exception as exc:
        failed = True
        report.error = str(exc)
        _attach(exc, report)
        raise
    finally:
        report.seconds = time.perf_counter() - started
        bar.close()
        if complete:
            report.frames_dropped = report.frames_read - report.frames_written
        if results is not None and hasattr(results, 'close'):
            results.close()
        close_error = None
        try:
            # A --max-frames run copies the input bag only up to its last frame, like an
            # interrupted one.
            with interrupts.critical():
                _close_all(writers, complete and total == len(source))
        except Exception as exc:
            close_error = exc
        finally:
            interrupts.uninstall()
        _final_notes(report, writers)
        if streaming and streaming[0].stats.dropped:
            reasons = ', '.join(f'{k}: {v}' for k, v in streaming[0].stats.dropped.items())
            report.notes.append(f'the causal estimator dropped frames ({reasons})')
        if close_error is not None:
            if failed:  # the first failure propagates; this one must not hide it
                report.notes.append(f'closing the outputs also failed: {close_error}')
            else:
                report.error = str(close_error)
                _attach(close_error, report)
                raise close_error
    shortfall = getattr(source, 'shortfall', None)
    if shortfall and total == len(source):
        report.incomplete = shortfall
    return report


def _attach(exc, report):
    """Attach `report` to the exception that stops the run (the CLI prints its summary)."""
    try:
        exc.report = report
    except AttributeError:  # an exception type with __slots__
        pass


class _CountingRegressor:
    """Pass-through to the regressor that counts windows (model calls) for the report."""

    def __init__(self, regressor, report):
        self._regressor = regressor
        self._report = report

    def predict(self, frames):
        """Run the wrapped regressor on one window."""
        self._report.windows += 1
        return self._regressor.predict(frames)

    def __getattr__(self, name):
        return getattr(self._regressor, name)


def _result(frame, disparity, config, geometry, needs_k, needs_points):
    from dvd_ros.geometry import depth_to_points, disparity_to_depth

    h, w = disparity.shape
    depth = points = point_rgb = intrinsics = None
    if needs_k:
        intrinsics, as_is = geometry.intrinsics(frame, w, h)
        if frame.camera_info is not None and not as_is:
            # The output CameraInfo must describe the intrinsics actually used.
            frame = replace(frame, camera_info=None)
    if config.metric is not None:
        a, b = config.metric
        depth = disparity_to_depth(disparity, a, b, config.max_depth)
    if needs_points:
        s = config.point_stride
        points = depth_to_points(depth, intrinsics, stride=s)
        point_rgb = np.ascontiguousarray(frame.rgb[::s, ::s])
    return out.DepthResult(frame, disparity, depth, intrinsics, points, point_rgb)


def _final_notes(report, writers):
    png = writers.get('png16')
    if png is not None:
        if png.saturated['disparity']:
            report.notes.append(f'{png.saturated["disparity"]} disparity pixels above 2.0 were '
                                'written as 65535 in the 16-bit PNGs (use npz for exact values)')
        if png.saturated['depth']:
            report.notes.append(f'{png.saturated["depth"]} depth pixels beyond 65.535 m were '
                                'written as 0 in the 16-bit PNGs (use npz or --max-depth)')
    bag = writers.get('bag')
    if bag is not None and bag.skipped_topics:
        report.notes.append('input topics without a message definition were not copied: '
                            + ', '.join(bag.skipped_topics))
