"""The shapes dataset (:mod:`.shapes`) rendered for the other codebases: as a
semantic-segmentation set for MMSegmentation (a label map per image) and as a
classification set for MMPretrain (a crop per shape), from its COCO
annotations, so that every codebase's tools are tested on built-in data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from .shapes import SHAPES_CLASSES

__all__ = ['SEG_CLASSES', 'render_classification', 'render_segmentation']

#: The segmentation classes: the background (label 0), then the shapes.
SEG_CLASSES: tuple[str, ...] = ('background', *SHAPES_CLASSES)
_SPLITS = ('train', 'val')


def _coco(shapes: dict[str, Any], split: str) -> dict[str, Any]:
    return json.loads(Path(shapes[f'{split}_ann']).read_text(encoding='utf-8'))


def _mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """The boolean mask of a COCO polygon list or RLE (as pycocotools' ``annToMask``)."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    else:
        rle = dict(size=segmentation['size'], counts=segmentation['counts'].encode('ascii'))
    return mask_utils.decode(rle).astype(bool)


def render_segmentation(shapes: dict[str, Any]) -> dict[str, Any]:
    """Write ``seg/{train,val}/<image>.png`` under the shapes' ``data_root``: per
    image, the label of each pixel (0 background, ``k`` the ``k``-th of
    :data:`~.shapes.SHAPES_CLASSES`; the visible masks do not overlap).

    Args:
        shapes (dict): What :func:`~.shapes.make_shapes_dataset` returned.

    Returns:
        dict: ``data_root``; ``{split}_img_path`` and ``{split}_seg_map_path``,
        relative to it (MMSegmentation's ``data_prefix``); ``classes``
        (:data:`SEG_CLASSES`).
    """
    root = Path(shapes['data_root'])
    out: dict[str, Any] = dict(data_root=str(root), classes=SEG_CLASSES)
    for split in _SPLITS:
        coco, folder = _coco(shapes, split), root / 'seg' / split
        folder.mkdir(parents=True, exist_ok=True)
        labels = {i['id']: np.zeros((i['height'], i['width']), np.uint8) for i in coco['images']}
        for ann in coco['annotations']:
            label = labels[ann['image_id']]
            label[_mask(ann['segmentation'], *label.shape)] = ann['category_id']
        for image in coco['images']:
            Image.fromarray(labels[image['id']]).save(folder / image['file_name'], format='PNG')
        out[f'{split}_img_path'] = shapes[f'{split}_img_prefix'].rstrip('/')
        out[f'{split}_seg_map_path'] = f'seg/{split}'
    return out


def render_classification(shapes: dict[str, Any]) -> dict[str, Any]:
    """Write ``cls/{train,val}/<image>_<n>.png`` under the shapes' ``data_root``:
    one square crop around each shape's box (the image's pixels, clipped to it),
    and ``cls/{train,val}.txt`` with a line ``<file> <label>`` per crop (label:
    the index in :data:`~.shapes.SHAPES_CLASSES`), MMPretrain's ``CustomDataset``
    annotation format.

    Returns:
        dict: ``data_root``; ``{split}_ann_file`` and ``{split}_data_prefix``,
        relative to it; ``classes``.
    """
    root = Path(shapes['data_root'])
    out: dict[str, Any] = dict(data_root=str(root), classes=SHAPES_CLASSES)
    for split in _SPLITS:
        coco, folder = _coco(shapes, split), root / 'cls' / split
        folder.mkdir(parents=True, exist_ok=True)
        images = {image['id']: image for image in coco['images']}
        lines = []
        for n, ann in enumerate(coco['annotations']):
            image = images[ann['image_id']]
            pixels = np.asarray(Image.open(Path(shapes[f'{split}_img_dir'], image['file_name'])))
            x, y, w, h = ann['bbox']
            half, cx, cy = max(w, h) // 2 + 1, x + w // 2, y + h // 2
            crop = pixels[max(cy - half, 0) : cy + half, max(cx - half, 0) : cx + half]
            name = f'{Path(image["file_name"]).stem}_{n:03d}.png'
            Image.fromarray(crop).save(folder / name, format='PNG')
            lines.append(f'{name} {ann["category_id"] - 1}\n')
        (root / 'cls' / f'{split}.txt').write_text(''.join(lines), encoding='utf-8')
        out[f'{split}_ann_file'] = f'cls/{split}.txt'
        out[f'{split}_data_prefix'] = f'cls/{split}'
    return out
