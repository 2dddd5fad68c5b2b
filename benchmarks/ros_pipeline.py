"""Throughput and latency of the depth node over real DDS (loopback profile), side by side.

Starts a synthetic camera (VGA by upscaling), a depth node with the stand-in model and a
listener as separate processes, for each configuration in turn, and prints one table:
input / output rates, stamp -> listener latency, drops (from /diagnostics).

    . scripts/env.sh && python benchmarks/ros_pipeline.py --seconds 10
    python benchmarks/ros_pipeline.py --overload --seconds 30   # input at 5x the model rate
"""

import argparse
import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import time

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's dvd_ros, not an installed copy

CONFIGS = {
    'xyzrgb stride 1': ['-p', 'point_stride:=1'],
    'xyzrgb stride 2': ['-p', 'point_stride:=2'],
    'no points': ['-p', 'publish_points:=false'],
    'half-size outputs': ['-p', 'output_scale:=0.5'],
}

DIAG = r"""
import json, sys, time, rclpy
from rclpy.node import Node
from diagnostic_msgs.msg import DiagnosticArray
rclpy.init(); node = Node('bench_diag'); last = {}
def keep(msg):
    last.update({kv.key: kv.value for kv in msg.status[0].values})
node.create_subscription(DiagnosticArray, '/diagnostics', keep, 10)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    rclpy.spin_once(node, timeout_sec=0.1)
print(json.dumps(last))
"""


def _env():
    from dvd_ros.ros.domain import confine_to_loopback, pick_domain

    env = dict(os.environ)
    env.update(ROS_DOMAIN_ID=str(pick_domain()), PYTHONPATH=str(REPO))
    confine_to_loopback(REPO / 'config' / 'fastdds_localhost.xml', env, force=True)
    return env


def _rss_mb(pid):
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
    return float('nan')


def run_config(name, node_args, seconds, rate, delay):
    env = _env()
    py = sys.executable
    camera = subprocess.Popen([py, '-m', 'dvd_ros.ros.synthetic_camera', '--ros-args', '-p',
                               'upscale:=5', '-p', 'num_frames:=6', '-p', f'rate:={rate}'],
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    node = subprocess.Popen([py, '-m', 'dvd_ros.ros.depth_node', '--ros-args', '-p',
                             'backend:=stand-in', '-p', f'stand_in_delay:={delay}', '-p',
                             'metric_mode:=fixed', '-p', 'window:=5', '-p', 'overlap:=2', '-p',
                             'queue_size:=8', *node_args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.0)
        diag = subprocess.Popen([py, '-c', DIAG, str(seconds + 1)], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, text=True)
        listener = subprocess.Popen([py, str(REPO / 'test' / 'ros_listener.py'), str(seconds)],
                                    cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
        rss = []
        while listener.poll() is None:
            rss.append(_rss_mb(node.pid))
            time.sleep(1.0)
        listener_out, _ = listener.communicate()
        diag_out, _ = diag.communicate(timeout=30)
    finally:
        for proc in (camera, node):
            proc.send_signal(signal.SIGINT)
        for proc in (camera, node):
            proc.wait(10)
    got = json.loads(listener_out.strip().splitlines()[-1])
    stats = json.loads(diag_out.strip().splitlines()[-1] or '{}')
    lat = sorted(v[3] / 1e6 for v in got['depth/image'].values())
    row = {
        'config': name,
        'in Hz': stats.get('input rate (Hz)', '?'),
        'out Hz': stats.get('output rate (Hz)', '?'),
        'depth/image recv': len(got['depth/image']),
        'points recv': len(got['depth/points']),
        'latency ms p50': f'{lat[len(lat) // 2]:.0f}' if lat else '-',
        'latency ms max': f'{lat[-1]:.0f}' if lat else '-',
        'dropped': stats.get('frames dropped', '?'),
        'model ms/window': stats.get('model time per window mean (ms)', '?'),
        # Resident memory of the node process at 1/4, 1/2, 3/4 and the end of the run.
        'node RSS MB (1/4, 1/2, 3/4, end)': ', '.join(
            f'{rss[min(len(rss) - 1, len(rss) * k // 4)]:.0f}' for k in (1, 2, 3, 4)),
    }
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seconds', type=float, default=10.0)
    parser.add_argument('--rate', type=float, default=30.0)
    parser.add_argument('--overload', action='store_true',
                        help='stand-in delay so the model handles 1/5 of the input rate')
    args = parser.parse_args()
    hop = 3  # window 5, overlap 2
    delay = 5 * hop / args.rate if args.overload else 0.0
    configs = {'overload x5, no points': ['-p', 'publish_points:=false']} if args.overload \
        else CONFIGS
    rows = [run_config(name, extra, args.seconds, args.rate, delay)
            for name, extra in configs.items()]
    keys = list(rows[0])
    print('| ' + ' | '.join(keys) + ' |')
    print('|' + '---|' * len(keys))
    for row in rows:
        print('| ' + ' | '.join(str(row[k]) for k in keys) + ' |')


if __name__ == '__main__':
    main()
