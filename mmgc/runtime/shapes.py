"""A synthetic instance-segmentation dataset in COCO format: coloured shapes
(docs/demo.md, "The dataset"). Image ``i`` of a split depends only on
``(seed, split, i)`` and the image size.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from mmengine.logging import print_log
from PIL import Image
from pycocotools import mask as mask_utils

from .atomic_checkpoint import atomic_write_bytes

__all__ = ['SHAPES_CLASSES', 'make_shapes_dataset']

SHAPES_CLASSES: tuple[str, ...] = ('circle', 'triangle', 'square', 'star')
MANIFEST_NAME = 'shapes_manifest.json'
_GENERATOR = 'mmgc.runtime.shapes'
_VERSION = 3  # bump when the drawing changes: older folders are then regenerated
_SPLITS = ('train', 'val')  # the index of a split seeds its images
_OURS = ('annotations', *_SPLITS)
_PARAMS = ('num_train', 'num_val', 'image_size', 'seed')
_CLASS_HUES = (0.0, 0.33, 0.62, 0.14)  # HSV hue of each class, jittered by +-0.04
_VERTICES = {'circle': 32, 'triangle': 3, 'square': 4}
# A covered shape keeps at least this share, and this many, of its pixels.
_MIN_VISIBLE_FRACTION = 0.7
_MIN_VISIBLE_PIXELS = 20


def make_shapes_dataset(
    data_root: str | os.PathLike,
    *,
    num_train: int = 800,
    num_val: int = 50,
    image_size: int = 128,
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``annotations/instances_{train,val}.json``, ``{train,val}/000000.png``...
    and ``shapes_manifest.json`` (the parameters) under ``data_root``: ``num_train``
    and ``num_val`` images of ``image_size`` (>= 32) pixels square. A complete dataset
    made with the same parameters is reused; one made with others, or interrupted,
    is regenerated.

    Returns:
        dict: Absolute ``data_root``, ``{train,val}_ann``, ``{train,val}_img_dir``;
        config-relative ``{train,val}_ann_file``, ``{train,val}_img_prefix`` (ending
        in ``/``); ``classes``; ``generated`` (False when reused).

    Raises:
        ValueError: If a count, the image size or the seed is out of range.
        FileExistsError: If ``data_root`` holds annotation or image folders
            without a manifest of this generator.
    """
    params = dict(generator=_GENERATOR, version=_VERSION)
    for name, value, low in zip(_PARAMS, (num_train, num_val, image_size, seed), (1, 1, 32, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f'{name} must be an int >= {low}; got {value!r}')
        params[name] = int(value)
    params['classes'] = list(SHAPES_CLASSES)
    root = Path(data_root).expanduser().resolve()
    paths = dict(data_root=str(root), classes=SHAPES_CLASSES)
    for split in _SPLITS:
        paths[f'{split}_ann_file'] = f'annotations/instances_{split}.json'
        paths[f'{split}_img_prefix'] = f'{split}/'
        paths[f'{split}_ann'] = str(root / paths[f'{split}_ann_file'])
        paths[f'{split}_img_dir'] = str(root / split)
    what = f'{num_train} train / {num_val} val images, {image_size}px, seed {seed}'
    manifest = root / MANIFEST_NAME
    if _is_reusable(manifest, params, paths):
        print_log(f'shapes dataset: reusing {root} ({what})', logger='current')
        return {**paths, 'generated': False}

    # Delete an earlier dataset of ours; refuse to overwrite anyone else's.
    previous = _read_json(manifest)
    taken = [str(root / name) for name in _OURS if (root / name).exists()]
    if taken and (not isinstance(previous, dict) or previous.get('generator') != _GENERATOR):
        raise FileExistsError(
            f'{root} already holds {", ".join(taken)} but no {MANIFEST_NAME} '
            "written by mmgc's shapes generator; refusing to overwrite it. "
            'Pass an empty or new folder as data_root.'
        )
    for name in _OURS:
        shutil.rmtree(root / name, ignore_errors=True)
    atomic_write_bytes(json.dumps({**params, 'complete': False}), manifest)  # interrupted: redone
    print_log(f'shapes dataset: drawing {what} into {root}', logger='current')
    for split in _SPLITS:
        _make_split(root, split, params)
    atomic_write_bytes(json.dumps({**params, 'complete': True}), manifest)
    return {**paths, 'generated': True}


def _is_reusable(manifest: Path, params: dict[str, Any], paths: dict[str, Any]) -> bool:
    """Whether the folder holds a complete dataset made with ``params``."""
    return _read_json(manifest) == {**params, 'complete': True} and all(
        Path(paths[f'{s}_ann']).is_file() and Path(paths[f'{s}_img_dir'], f'{i:06d}.png').is_file()
        for s in _SPLITS
        for i in range(params[f'num_{s}'])
    )


def _make_split(root: Path, split: str, params: dict[str, Any]) -> None:
    """Draw the images of ``split`` into ``root / split`` and write its annotations."""
    img_dir, size, seed = root / split, params['image_size'], params['seed']
    img_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(params[f'num_{split}']):
        rng = np.random.default_rng([seed, _SPLITS.index(split), index])
        pixels, instances = _draw_image(rng, size)
        images.append(dict(id=index + 1, file_name=f'{index:06d}.png', width=size, height=size))
        Image.fromarray(pixels).save(img_dir / images[-1]['file_name'], format='PNG')
        for inst in instances:
            annotations.append(dict(id=len(annotations) + 1, image_id=index + 1, iscrowd=0, **inst))
    desc = f'mmgc synthetic shapes, {split} split'
    info = dict(description=desc, version=f'{_VERSION}', seed=seed)
    classes = [dict(id=i + 1, name=c, supercategory='shape') for i, c in enumerate(SHAPES_CLASSES)]
    coco = dict(info=info, images=images, annotations=annotations, categories=classes)
    atomic_write_bytes(json.dumps(coco), root / 'annotations' / f'instances_{split}.json')
    print_log(f'shapes dataset: {split}: {len(annotations)} instances', logger='current')


def _draw_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One image's RGB pixels and its instances' COCO fields."""
    start, end = rng.integers(0, 256, size=(2, 3)).astype(np.float64)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) / max(size - 1, 1)
    t = (xs * math.cos(angle) + ys * math.sin(angle) + 1.0) / 2.0
    background = start + (end - start) * t[..., None]
    if rng.random() < 0.35:  # a checkerboard on top
        cell = int(rng.integers(6, 20))
        checker = ((np.arange(size)[:, None] // cell + np.arange(size) // cell) % 2)[..., None]
        background = background + checker * rng.uniform(-40.0, 40.0, size=3)
    background = np.clip(np.rint(background), 0, 255).astype(np.uint8)
    pixels = background.copy()
    placed: list[dict[str, Any]] = []  # label, polygon, full and visible masks, colour
    for _ in range(int(rng.integers(2, 7))):
        for _ in range(30):  # tries; none fits when no room is left
            shape = _sample_shape(rng, size)
            if shape is not None and all(
                (left := int((prev['visible'] & ~shape['full']).sum())) >= _MIN_VISIBLE_PIXELS
                and left >= _MIN_VISIBLE_FRACTION * prev['full'].sum()
                for prev in placed
            ):
                break
        else:
            continue
        covered = shape['full']
        behind = [background[covered].mean(axis=0)]
        for prev in placed:
            if (prev['visible'] & covered).any():
                behind.append(prev['colour'])
            prev['visible'] &= ~covered
        shape['visible'] = covered.copy()
        shape['colour'] = pixels[covered] = _colour(rng, behind, shape['label'])
        placed.append(shape)
    noise = rng.integers(-6, 7, size=pixels.shape)
    pixels = np.clip(pixels.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return pixels, [_annotation(shape) for shape in placed]


def _sample_shape(rng: np.random.Generator, size: int) -> dict[str, Any] | None:
    """A random shape inside the image, or None if it is too small."""
    label = int(rng.integers(len(SHAPES_CLASSES)))
    radius = rng.uniform(0.2, 0.5) * size / 2.0
    cx, cy = rng.uniform(radius + 1.0, size - radius - 1.0, size=2)
    theta = rng.uniform(0.0, 2.0 * math.pi)
    n = _VERTICES.get(SHAPES_CLASSES[label])
    if n is not None:
        angles, radii = theta + 2.0 * math.pi * np.arange(n) / n, np.full(n, radius)
    else:  # a five-pointed star
        angles = theta + math.pi * np.arange(10) / 5
        radii = np.where(np.arange(10) % 2 == 0, radius, radius * 0.45)
    xy = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
    polygon = [round(float(v), 2) for v in xy.reshape(-1)]
    full = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([polygon], size, size)))
    if full.sum() < _MIN_VISIBLE_PIXELS:
        return None
    return dict(label=label, polygon=polygon, full=full.astype(bool))


def _colour(rng: np.random.Generator, behind: list[np.ndarray], label: int) -> np.ndarray:
    """A shade of the class's hue far from every colour behind the shape."""
    refs = np.stack([np.asarray(c, dtype=np.float64) for c in behind])
    best, best_dist = None, -1.0
    for _ in range(30):
        hue = (_CLASS_HUES[label] + rng.uniform(-0.04, 0.04)) % 1.0
        rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 1.0), rng.uniform(0.45, 1.0))
        colour = np.rint(np.asarray(rgb) * 255.0)
        dist = float(np.abs(refs - colour).sum(axis=1).min())
        if dist >= 120:
            return colour.astype(np.uint8)
        if dist > best_dist:
            best, best_dist = colour, dist
    return best.astype(np.uint8)


def _annotation(shape: dict[str, Any]) -> dict[str, Any]:
    """COCO fields of one instance: its polygon if untouched, else its visible pixels' RLE."""
    visible = shape['visible']
    segmentation: Any = [shape['polygon']]
    if not np.array_equal(visible, shape['full']):
        rle = mask_utils.encode(np.asfortranarray(visible.astype(np.uint8)))
        segmentation = dict(size=list(rle['size']), counts=rle['counts'].decode('ascii'))
    label, area = shape['label'] + 1, int(visible.sum())
    bbox = list(cv2.boundingRect(visible.astype(np.uint8)))  # x, y, w, h of the pixels
    return dict(category_id=label, segmentation=segmentation, area=area, bbox=bbox)


def _read_json(path: Path) -> Any:
    """The content of ``path``, or None if it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return None
