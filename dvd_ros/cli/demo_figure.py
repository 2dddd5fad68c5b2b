"""The demo's picture: one frame in detail, its point cloud from aside, and frames over time.

Layout (every depth panel on one colour scale of inverse depth, after the sequence's
scale+shift fit, so predicted and true values compare directly):

1. one frame: RGB | predicted | ground truth | confidence | relative error;
2. the point clouds of that frame (predicted, true) rendered from a viewpoint turned about
   the vertical axis, so the depth layout shows as geometry, not only as colour;
3. a strip of frames over time, predicted above true;
4. a slice over time: the middle image row of every frame stacked top to bottom (time runs
   down); temporal flicker shows as horizontal streaks in the predicted slice.
"""

import cv2
import numpy as np

from dvd_ros.colorize import colorize

LABEL_HEIGHT = 18
PAD = 4


def splat_render(depth, rgb, K, yaw_deg=25.0, pitch_deg=-10.0, point_px=2):
    """Render a depth map as a coloured point cloud seen from a turned viewpoint.

    The camera turns about the cloud's median-depth point (yaw about the vertical axis, pitch
    about the horizontal one) and keeps ``K``; points are drawn far to near as squares of
    ``point_px`` pixels (a painter's z-buffer).

    :param depth: (H, W) float metres, NaN/<= 0 = no point.
    :param rgb: (H, W, 3) uint8 colours.
    :param K: (3, 3) intrinsics of ``depth``.
    :param yaw_deg: turn about the vertical axis (degrees).
    :param pitch_deg: turn about the horizontal axis (degrees).
    :param point_px: side of each drawn point (pixels).
    :return: (H, W, 3) uint8 image, white background.
    """
    height, width = depth.shape
    v, u = np.mgrid[0:height, 0:width]
    valid = np.isfinite(depth) & (depth > 0)
    z = depth[valid].astype(np.float64)
    x = (u[valid] - K[0, 2]) / K[0, 0] * z
    y = (v[valid] - K[1, 2]) / K[1, 1] * z
    points = np.stack([x, y, z], 1)
    colours = rgb[valid]
    canvas = np.full((height, width, 3), 255, np.uint8)
    if not len(points):
        return canvas
    pivot = np.array([0.0, 0.0, np.median(z)])
    a, b = np.radians(yaw_deg), np.radians(pitch_deg)
    yaw = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    pitch = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    turned = (points - pivot) @ (pitch @ yaw).T + pivot
    ahead = turned[:, 2] > 1e-3
    turned, colours = turned[ahead], colours[ahead]
    cols = np.round(K[0, 0] * turned[:, 0] / turned[:, 2] + K[0, 2]).astype(np.int64)
    rows = np.round(K[1, 1] * turned[:, 1] / turned[:, 2] + K[1, 2]).astype(np.int64)
    order = np.argsort(-turned[:, 2])  # far first: nearer points overwrite
    for dr in range(point_px):
        for dc in range(point_px):
            r, c = rows[order] + dr, cols[order] + dc
            inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
            canvas[r[inside], c[inside]] = colours[order][inside]
    return canvas


def _label(tile, text):
    band = np.full((LABEL_HEIGHT, tile.shape[1], 3), 255, np.uint8)
    cv2.putText(band, text, (3, LABEL_HEIGHT - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1,
                cv2.LINE_AA)
    return np.concatenate([band, tile])


def _row(tiles, width):
    gap = np.full((tiles[0].shape[0], PAD, 3), 255, np.uint8)
    parts = []
    for tile in tiles:
        parts += [tile, gap]
    row = np.concatenate(parts[:-1], axis=1)
    if row.shape[1] < width:
        row = np.concatenate([row, np.full((row.shape[0], width - row.shape[1], 3), 255,
                                           np.uint8)], axis=1)
    return row


def _up(image, scale):
    return cv2.resize(image, (image.shape[1] * scale, image.shape[0] * scale),
                      interpolation=cv2.INTER_NEAREST)


def _colour_bar(lo, hi, width, height=14):
    """Return a labelled bar of the inverse-depth scale, ticks in metres."""
    ramp = np.tile(np.linspace(lo, hi, width, dtype=np.float32), (height, 1))
    bar = colorize(ramp, lo, hi)
    band = np.full((LABEL_HEIGHT, width, 3), 255, np.uint8)
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        value = lo + frac * (hi - lo)
        x = int(frac * (width - 1))
        text = f'{1.0 / value:.1f} m'
        size = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.35, 1)[0][0]
        cv2.putText(band, text, (min(max(0, x - size // 2), width - size), LABEL_HEIGHT - 5),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, band])


def demo_figure(rgb, aligned, truth, confidence, K, pick=None, strip=7, title=''):
    """Compose the demo picture (see the module docstring).

    :param rgb: (T, H, W, 3) uint8 frames.
    :param aligned: (T, H, W) predicted depth after the sequence's scale+shift fit, metres.
    :param truth: (T, H, W) ground-truth depth, metres.
    :param confidence: (T, H, W) confidence in [0, 1], or None.
    :param K: (3, 3) intrinsics of the frames.
    :param pick: index of the frame shown in detail (default: the middle one).
    :param strip: frames in the strip over time.
    :param title: text of the top line.
    :return: (H', W', 3) uint8 RGB image.
    """
    count, height, width = truth.shape
    pick = count // 2 if pick is None else pick
    if not np.isfinite(K).all():  # no camera_info recorded: a 60 degree guess draws the cloud
        focal = width / (2 * np.tan(np.radians(30)))
        K = np.array([[focal, 0, (width - 1) / 2], [0, focal, (height - 1) / 2], [0, 0, 1]])
    scale = max(1, -(-220 // width))
    inv_truth = 1.0 / np.where(truth > 0, truth, np.nan)
    inv_pred = 1.0 / np.where(aligned > 0, aligned, np.nan)
    lo, hi = (float(v) for v in np.nanpercentile(inv_truth, [2, 98]))

    def depth_tile(inv):
        return _up(colorize(inv.astype(np.float32), lo, hi), scale)

    error = np.abs(aligned[pick] - truth[pick]) / truth[pick]
    conf = np.full((height, width), np.nan, np.float32) if confidence is None else confidence[pick]
    detail = [
        _label(_up(rgb[pick], scale), f'RGB, frame {pick}'),
        _label(depth_tile(inv_pred[pick]), 'predicted (after fit)'),
        _label(depth_tile(inv_truth[pick]), 'ground truth'),
        _label(_up(colorize(conf.astype(np.float32), 0.0, 1.0, 'viridis'), scale),
               'confidence (0-1)'),
        _label(_up(colorize(error.astype(np.float32), 0.0, 0.3, 'magma'), scale),
               f'rel. error 0-0.3 (mean {np.nanmean(error):.3f})'),
    ]
    clouds = [
        _label(_up(splat_render(aligned[pick], rgb[pick], K), scale),
               'predicted cloud, seen turned'),
        _label(_up(splat_render(truth[pick], rgb[pick], K), scale), 'true cloud, seen turned'),
    ]
    picks = np.linspace(0, count - 1, min(strip, count)).round().astype(int)
    small = max(1, scale - 1)
    strip_pred = [_label(_up(colorize(inv_pred[i].astype(np.float32), lo, hi), small),
                         f't={i}') for i in picks]
    strip_true = [_up(colorize(inv_truth[i].astype(np.float32), lo, hi), small) for i in picks]
    row = height // 2
    rows_per_frame = max(1, round(scale * height / count))

    def time_slice(inv):
        image = colorize(inv[:, row].astype(np.float32), lo, hi)
        return cv2.resize(image, (width * scale, count * rows_per_frame),
                          interpolation=cv2.INTER_NEAREST)

    slices = [_label(time_slice(inv_pred), f'predicted: row {row}, time down'),
              _label(time_slice(inv_truth), 'true: the same row')]
    rows = [_row(detail, 0)]
    full = rows[0].shape[1]
    bar = _colour_bar(lo, hi, min(full, 5 * width * scale // 2))
    rows.append(_row(clouds + [np.concatenate([bar, np.full(
        (clouds[0].shape[0] - bar.shape[0], bar.shape[1], 3), 255, np.uint8)])], full))
    rows.append(_row(strip_pred, full))
    rows.append(_row([_label(t, '') for t in strip_true], full))
    rows.append(_row(slices, full))
    width_max = max(r.shape[1] for r in rows)
    rows = [_row([r], width_max) for r in rows]
    head = _label(np.full((0, width_max, 3), 255, np.uint8), title)
    gap = np.full((PAD, width_max, 3), 255, np.uint8)
    out = [head]
    for r in rows:
        out += [r, gap]
    return np.concatenate(out[:-1])
