"""Photographs for surface textures of the richer synthetic scenes (scikit-image samples).

Only photographs without any depth or disparity ground truth are used (never the stereo pair
``motorcycle_*`` with its disparity map): images that come with depth are kept for evaluation.
"""

import numpy as np

from dvd_ros.errors import InputError

# scikit-image's bundled sample photographs (inside the wheel, no download): textures and scenes.
PHOTOS = ('astronaut', 'brick', 'camera', 'chelsea', 'coffee', 'grass', 'gravel', 'rocket',
          'moon', 'coins')


def load_photos(names=PHOTOS, max_side=128):
    """Load sample photographs -> list of (h, w, 3) float32 images in [0, 1].

    :param names: ``skimage.data`` function names
    :param max_side: longest side after an area downscale (texture lookups stay cheap)
    :raises InputError: scikit-image is missing or a name is not one of its sample images
    """
    try:
        from skimage import data
    except ImportError:
        raise InputError('photo textures need scikit-image: `pip install scikit-image`, or '
                         'train without --rich-seeds and --outdoor-seeds') from None
    import cv2

    images = []
    for name in names:
        loader = getattr(data, name, None)
        if loader is None or name.startswith('motorcycle'):
            raise InputError(f'{name!r} is not a usable scikit-image sample photograph')
        img = np.asarray(loader())
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        img = img[..., :3].astype(np.float32)
        img /= 255.0 if img.max() > 1.0 else 1.0
        scale = max_side / max(img.shape[:2])
        if scale < 1.0:
            size = (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale)))
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        images.append(np.ascontiguousarray(img))
    return images
