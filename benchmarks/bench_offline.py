"""Cost of the offline pipeline itself (read, stitch, convert, write) per output kind.

The model is replaced by a trivial regressor so the numbers are the I/O and packing overhead
that comes on top of the DiT.  Writes a synthetic rgb8 bag (MCAP) first.

Run from the repository root::

    PYTHONPATH=. python benchmarks/bench_offline.py --frames 100 --height 480 --width 640
"""

import argparse
from pathlib import Path
import shutil
import tempfile
import time

import numpy as np

from dvd_ros.offline.pipeline import OfflineConfig, run_pipeline
from dvd_ros.offline.sources import open_source, rosbags_typestore

CASES = [(('png16',), None), (('npz',), None), (('mp4',), None), (('ply',), (2.0, 0.25)),
         (('bag',), None), (('bag',), (2.0, 0.25))]


class BrightnessRegressor:
    """Green channel as disparity: no model cost."""

    def predict(self, frames):
        """Return (T, H, W) float32 in [0, 1]."""
        return frames[..., 1].astype(np.float32) / 255.0


def write_bag(path, frames, period_ns=33_000_000):
    from rosbags.rosbag2 import StoragePlugin, Writer

    ts = rosbags_typestore()
    h, w = frames.shape[1:3]
    with Writer(path, version=8, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection('/cam/image_raw', 'sensor_msgs/msg/Image', typestore=ts)
        for i, rgb in enumerate(frames):
            stamp = 1_700_000_000_000_000_000 + i * period_ns
            header = ts.types['std_msgs/msg/Header'](
                stamp=ts.types['builtin_interfaces/msg/Time'](sec=stamp // 10**9,
                                                              nanosec=stamp % 10**9),
                frame_id='cam')
            msg = ts.types['sensor_msgs/msg/Image'](
                header=header, height=h, width=w, encoding='rgb8', is_bigendian=0, step=w * 3,
                data=rgb.reshape(-1))
            writer.write(conn, stamp, ts.serialize_cdr(msg, 'sensor_msgs/msg/Image'))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--frames', type=int, default=100)
    parser.add_argument('--height', type=int, default=480)
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--window', type=int, default=81)
    parser.add_argument('--overlap', type=int, default=21)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (args.frames, args.height, args.width, 3), np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_bag(root / 'in', frames)
        start = time.perf_counter()
        count = sum(1 for _ in open_source(root / 'in'))
        seconds = time.perf_counter() - start
        print(f'{args.frames} frames {args.width}x{args.height}, window {args.window} overlap '
              f'{args.overlap}')
        print(f'{"read bag only":22s} {count / seconds:7.1f} frames/s')
        for outputs, metric in CASES:
            out = root / 'out'
            shutil.rmtree(out, ignore_errors=True)
            config = OfflineConfig(out_dir=out, outputs=outputs, metric=metric,
                                   window=args.window, overlap=args.overlap, progress=False)
            start = time.perf_counter()
            report = run_pipeline(open_source(root / 'in'), BrightnessRegressor(), config)
            seconds = time.perf_counter() - start
            size = sum(p.stat().st_size for p in out.rglob('*') if p.is_file()) / 1e6
            label = ','.join(outputs) + (' (metric)' if metric else ' (relative)')
            print(f'{label:22s} {report.frames_written / seconds:7.1f} frames/s '
                  f'{size / report.frames_written:7.2f} MB/frame')


if __name__ == '__main__':
    main()
