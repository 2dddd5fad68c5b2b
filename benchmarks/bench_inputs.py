"""Camera input costs per frame: each encoding -> RGB, JPEG/PNG decoding, rectification.

Run from the repository root::

    PYTHONPATH=. python benchmarks/bench_inputs.py [--width 640 --height 480 --repeat 20]

Prints the fastest milliseconds per frame of each conversion (``rgb8`` is a zero-copy view),
plus the one-off cost of the rectification maps. Same machine, same run.
"""

import argparse

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from timing import best_ms

from dvd_ros.rectify import CameraModel, Rectifier
from dvd_ros.ros.image_inputs import camera_to_rgb, compressed_to_rgb


def _image(data, encoding, width, height):
    msg = Image(height=height, width=width, encoding=encoding)
    msg.data = np.ascontiguousarray(data).tobytes()
    msg.step = len(msg.data) // data.shape[0]
    return msg


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--height', type=int, default=480)
    parser.add_argument('--repeat', type=int, default=20)
    args = parser.parse_args()
    w, h = args.width, args.height
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([(x * 255 // w), (y * 255 // h), ((x + y) % 256)], 2).astype(np.uint8)
    i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
    uv = np.stack([i420[h:h + h // 4].reshape(h // 2, w // 2),
                   i420[h + h // 4:].reshape(h // 2, w // 2)], 2).reshape(h // 2, w)
    inputs = {
        'rgb8': _image(rgb, 'rgb8', w, h),
        'bgr8': _image(rgb[:, :, ::-1], 'bgr8', w, h),
        'yuv422_yuy2': _image(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_YUY2), 'yuv422_yuy2', w, h),
        'uyvy': _image(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_UYVY), 'uyvy', w, h),
        'nv12': _image(np.concatenate([i420[:h], uv]), 'nv12', w, h),
        'bayer_rggb8': _image(rgb[:, :, 1], 'bayer_rggb8', w, h),
        'rgb16': _image(rgb.astype(np.uint16) * 257, 'rgb16', w, h),
    }
    rows = {name: best_ms(lambda m=msg: camera_to_rgb(m), args.repeat)
            for name, msg in inputs.items()}
    for codec, fmt in (('.jpg', 'bgr8; jpeg compressed bgr8'), ('.png', 'bgr8; png compressed '
                                                                       'bgr8')):
        ok, data = cv2.imencode(codec, rgb[:, :, ::-1])
        msg = CompressedImage(format=fmt)
        msg.data = data.tobytes()
        rows[f'compressed {codec[1:]} ({len(msg.data) // 1024} kB)'] = best_ms(
            lambda m=msg: compressed_to_rgb(m), args.repeat)
    k = np.array([[0.8 * w, 0, w / 2 - 0.5], [0, 0.8 * w, h / 2 - 0.5], [0, 0, 1]])
    model = CameraModel.from_arrays(w, h, k, (-0.25, 0.07, 0.001, -0.001, 0.0), np.eye(3),
                                    np.c_[k, np.zeros(3)])
    rectifier = Rectifier()
    rows['rectify remap (maps cached)'] = best_ms(lambda: rectifier.remap(rgb, model),
                                                  args.repeat)
    build = best_ms(lambda: Rectifier().maps(model), max(3, args.repeat // 4))
    print(f'{w}x{h}, fastest of {args.repeat} calls (ms per frame):')
    print('| input | ms |\n|---|---|')
    for name, ms in rows.items():
        print(f'| {name} | {ms:.3f} |')
    print(f'rectification maps, once per calibration: {build:.1f} ms')


if __name__ == '__main__':
    main()
