"""A synthetic instance-segmentation dataset in COCO format: coloured shapes.

The demo and the tests need a dataset that the package can make by itself, on
any machine, in seconds: COCO cannot be downloaded everywhere. This module
draws two to six coloured geometric shapes per image (circles, triangles,
squares and stars) of varied sizes, rotations and colours (one hue per class),
which may overlap, on varied backgrounds (two-colour gradients,
checkerboards, pixel noise), and writes a train and a val split as PNG images
plus COCO ``instances_*.json`` annotation files.

The masks are exact. Every shape is a polygon, rasterized with pycocotools'
own polygon rasterizer (the one MMDetection's ``LoadAnnotations`` and
``COCOeval`` use), and the image is painted from those very rasters:

* a shape that nothing covers is annotated with its polygon;
* a shape partly covered by a later one is annotated with the RLE of exactly
  its visible pixels (the COCO convention: masks are modal).

Boxes are the tight extent of the visible pixels, areas their count.

Everything depends only on ``seed`` and ``image_size``: image ``i`` of a split
is drawn from its own generator ``default_rng([seed, split, i])``, so it is
the same whatever the number of images asked for. The folder records the
parameters in ``shapes_manifest.json``; a later call with the same parameters
reuses the files, a call with other parameters regenerates them.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Union

import numpy as np
from mmengine.logging import print_log
from PIL import Image
from pycocotools import mask as mask_utils

__all__ = ['SHAPES_CLASSES', 'SHAPES_METAINFO', 'make_shapes_dataset']

SHAPES_CLASSES: tuple[str, ...] = ('circle', 'triangle', 'square', 'star')
SHAPES_METAINFO: dict[str, Any] = dict(
    classes=SHAPES_CLASSES,
    palette=[(220, 20, 60), (0, 128, 0), (0, 0, 230), (255, 160, 0)],
)

MANIFEST_NAME = 'shapes_manifest.json'
_GENERATOR = 'mmgc.runtime.shapes'
# Bump when the drawing changes, so that folders made by an older version are
# regenerated instead of silently reused.
_VERSION = 3
_SPLIT_CODES = {'train': 0, 'val': 1}
_MIN_IMAGE_SIZE = 32
# objects per image: uniform in [_MIN_OBJECTS, _MAX_OBJECTS] (fewer when no room is left)
_MIN_OBJECTS = 2
_MAX_OBJECTS = 6
# hue (HSV, 0..1) of each class, in SHAPES_CLASSES order, and its jitter
_CLASS_HUES = (0.0, 0.33, 0.62, 0.14)
_HUE_JITTER = 0.04
# A covered shape keeps at least this share of its pixels (and this many
# pixels): heavily hidden shapes make poor, ambiguous targets.
_MIN_VISIBLE_FRACTION = 0.7
_MIN_VISIBLE_PIXELS = 20
_PLACEMENT_TRIES = 30
# Shapes are drawn inside a circle whose diameter is this share of the image.
_SIZE_RANGE = (0.2, 0.5)
_CIRCLE_VERTICES = 32
_STAR_INNER_RATIO = 0.45

PathLike = Union[str, os.PathLike]


def make_shapes_dataset(
    data_root: PathLike,
    *,
    num_train: int = 800,
    num_val: int = 50,
    image_size: int = 128,
    seed: int = 0,
) -> dict[str, Any]:
    """Write (or reuse) the synthetic shapes dataset under ``data_root``.

    The folder gets this layout::

        data_root/
            shapes_manifest.json            the generation parameters
            annotations/instances_train.json
            annotations/instances_val.json
            train/000000.png ...
            val/000000.png ...

    Args:
        data_root (str | os.PathLike): Folder to write to. Created if missing.
            If it holds a complete dataset made with the same parameters, the
            files are reused; if it holds one made with other parameters
            (or an interrupted one), that one is deleted and regenerated.
        num_train (int): Number of training images. Defaults to 800.
        num_val (int): Number of validation images. Defaults to 50.
        image_size (int): Width and height of the square images, in pixels,
            at least 32. Defaults to 128.
        seed (int): Non-negative seed; the same seed gives the same files.
            Defaults to 0.

    Returns:
        dict: Absolute paths ``data_root``, ``train_ann``, ``val_ann``,
        ``train_img_dir``, ``val_img_dir``; the same files relative to
        ``data_root`` as MMDetection configs take them (``train_ann_file``,
        ``val_ann_file``, ``train_img_prefix``, ``val_img_prefix``, the
        prefixes ending in ``/``); ``classes`` (a tuple of class names, in
        category-id order); and ``generated`` (``False`` when the files were
        reused).

    Raises:
        ValueError: If a count, the image size or the seed is out of range.
        FileExistsError: If ``data_root`` already holds annotation or image
            folders that this generator did not write (no manifest).

    Example:
        >>> from mmgc.runtime.shapes import make_shapes_dataset
        >>> paths = make_shapes_dataset('data/shapes', num_train=8, num_val=4)
        >>> paths['train_ann_file']
        'annotations/instances_train.json'
    """
    params = _check_params(num_train, num_val, image_size, seed)
    root = Path(data_root).expanduser().resolve()
    paths = _paths(root)

    manifest_path = root / MANIFEST_NAME
    if _is_reusable(manifest_path, params, paths):
        print_log(
            f'shapes dataset: reusing {root} ({num_train} train / {num_val} val '
            f'images, {image_size}px, seed {seed})',
            logger='current',
        )
        return {**paths, 'generated': False}

    _clear_previous(root, manifest_path)
    root.mkdir(parents=True, exist_ok=True)
    # Written first as incomplete: an interrupted run is recognised as ours
    # and regenerated next time instead of being reused or refused.
    _write_json(manifest_path, {**params, 'complete': False})
    for split, count in (('train', num_train), ('val', num_val)):
        print_log(
            f'shapes dataset: drawing {count} {split} images '
            f'({image_size}px, seed {seed}) into {root / split}',
            logger='current',
        )
        coco = _make_split(root / split, split, count, image_size, seed)
        _write_json(Path(paths[f'{split}_ann']), coco)
        print_log(
            f'shapes dataset: {split}: {len(coco["images"])} images, '
            f'{len(coco["annotations"])} instances',
            logger='current',
        )
    _write_json(manifest_path, {**params, 'complete': True})
    return {**paths, 'generated': True}


def _check_params(num_train: int, num_val: int, image_size: int, seed: int) -> dict[str, Any]:
    """Validate the public arguments and return the manifest's parameters."""
    for name, value, low in (
        ('num_train', num_train, 1),
        ('num_val', num_val, 1),
        ('image_size', image_size, _MIN_IMAGE_SIZE),
        ('seed', seed, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(
                f'{name} must be an int >= {low}; got {value!r} ({type(value).__name__})'
            )
        if value < low:
            raise ValueError(f'{name} must be an int >= {low}; got {value}')
    return dict(
        generator=_GENERATOR,
        version=_VERSION,
        num_train=int(num_train),
        num_val=int(num_val),
        image_size=int(image_size),
        seed=int(seed),
        classes=list(SHAPES_CLASSES),
    )


def _paths(root: Path) -> dict[str, Any]:
    """Absolute and config-relative names of the dataset's files."""
    rel = dict(
        train_ann_file='annotations/instances_train.json',
        val_ann_file='annotations/instances_val.json',
        train_img_prefix='train/',
        val_img_prefix='val/',
    )
    return dict(
        data_root=str(root),
        train_ann=str(root / rel['train_ann_file']),
        val_ann=str(root / rel['val_ann_file']),
        train_img_dir=str(root / 'train'),
        val_img_dir=str(root / 'val'),
        **rel,
        classes=SHAPES_CLASSES,
    )


def _is_reusable(manifest_path: Path, params: dict[str, Any], paths: dict[str, Any]) -> bool:
    """Whether the folder holds a complete dataset made with ``params``."""
    manifest = _read_json(manifest_path)
    if manifest != {**params, 'complete': True}:
        return False
    for split in ('train', 'val'):
        coco = _read_json(Path(paths[f'{split}_ann']))
        if not isinstance(coco, dict) or len(coco.get('images', [])) != params[f'num_{split}']:
            return False
        img_dir = Path(paths[f'{split}_img_dir'])
        if not all((img_dir / img['file_name']).is_file() for img in coco['images']):
            return False
    return True


def _clear_previous(root: Path, manifest_path: Path) -> None:
    """Delete an earlier dataset of ours; refuse to overwrite anyone else's."""
    ours = ('annotations', 'train', 'val')
    if manifest_path.is_file():
        manifest = _read_json(manifest_path)
        if isinstance(manifest, dict) and manifest.get('generator') == _GENERATOR:
            for name in ours:
                shutil.rmtree(root / name, ignore_errors=True)
            manifest_path.unlink()
            return
    taken = [str(root / name) for name in ours if (root / name).exists()]
    if taken:
        raise FileExistsError(
            f'{root} already holds {", ".join(taken)} but no {MANIFEST_NAME} '
            "written by mmgc's shapes generator; refusing to overwrite it. "
            'Pass an empty or new folder as data_root.'
        )


def _make_split(
    img_dir: Path, split: str, count: int, image_size: int, seed: int
) -> dict[str, Any]:
    """Draw ``count`` images of one split into ``img_dir``; return its COCO dict."""
    img_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        rng = np.random.default_rng([seed, _SPLIT_CODES[split], index])
        pixels, instances = _draw_image(rng, image_size)
        file_name = f'{index:06d}.png'
        Image.fromarray(pixels).save(img_dir / file_name, format='PNG')
        image_id = index + 1
        images.append(dict(id=image_id, file_name=file_name, width=image_size, height=image_size))
        for inst in instances:
            annotations.append(dict(id=len(annotations) + 1, image_id=image_id, iscrowd=0, **inst))
    return dict(
        info=dict(
            description=f'mmgc synthetic shapes, {split} split',
            version=str(_VERSION),
            seed=seed,
        ),
        images=images,
        annotations=annotations,
        categories=[
            dict(id=i + 1, name=name, supercategory='shape')
            for i, name in enumerate(SHAPES_CLASSES)
        ],
    )


def _draw_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Draw one image; return its RGB pixels and its instance annotations."""
    background = _background(rng, size)
    pixels = background.copy()
    placed: list[dict[str, Any]] = []  # polygon, full mask, visible mask, ...
    for _ in range(int(rng.integers(_MIN_OBJECTS, _MAX_OBJECTS + 1))):
        for _ in range(_PLACEMENT_TRIES):
            candidate = _sample_shape(rng, size)
            if candidate is not None and _fits(candidate['full'], placed):
                break
        else:
            continue  # no room left for one more shape in this image
        covered = candidate['full']
        behind = [background[covered].mean(axis=0)]
        for prev in placed:
            if (prev['visible'] & covered).any():
                behind.append(prev['colour'])
            prev['visible'] &= ~covered
        candidate['visible'] = covered.copy()
        candidate['colour'] = _colour(rng, behind, candidate['label'])
        pixels[covered] = candidate['colour']
        placed.append(candidate)

    noise = rng.integers(-6, 7, size=pixels.shape)
    pixels = np.clip(pixels.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return pixels, [_annotation(inst) for inst in placed]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A two-colour linear gradient, sometimes overlaid with a checkerboard."""
    start, end = rng.integers(0, 256, size=(2, 3)).astype(np.float64)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) / max(size - 1, 1)
    t = (xs * math.cos(angle) + ys * math.sin(angle) + 1.0) / 2.0
    image = start + (end - start) * t[..., None]
    if rng.random() < 0.35:
        cell = int(rng.integers(6, 20))
        checker = ((np.arange(size)[:, None] // cell + np.arange(size) // cell) % 2)[..., None]
        image = image + checker * rng.uniform(-40.0, 40.0, size=3)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _sample_shape(rng: np.random.Generator, size: int) -> dict[str, Any] | None:
    """A random shape inside the image, with its polygon and full raster."""
    label = int(rng.integers(len(SHAPES_CLASSES)))
    radius = rng.uniform(*_SIZE_RANGE) * size / 2.0
    cx, cy = rng.uniform(radius + 1.0, size - radius - 1.0, size=2)
    theta = rng.uniform(0.0, 2.0 * math.pi)
    name = SHAPES_CLASSES[label]
    if name == 'circle':
        angles = theta + 2.0 * math.pi * np.arange(_CIRCLE_VERTICES) / _CIRCLE_VERTICES
        radii = np.full(_CIRCLE_VERTICES, radius)
    elif name == 'triangle':
        angles = theta + 2.0 * math.pi * np.arange(3) / 3
        radii = np.full(3, radius)
    elif name == 'square':
        angles = theta + 2.0 * math.pi * np.arange(4) / 4
        radii = np.full(4, radius)
    else:  # star: five points
        angles = theta + math.pi * np.arange(10) / 5
        radii = np.where(np.arange(10) % 2 == 0, radius, radius * _STAR_INNER_RATIO)
    xy = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
    polygon = [round(float(v), 2) for v in xy.reshape(-1)]
    full = _rasterize(polygon, size)
    if full.sum() < _MIN_VISIBLE_PIXELS:
        return None
    return dict(label=label, polygon=polygon, full=full)


def _rasterize(polygon: list[float], size: int) -> np.ndarray:
    """Rasterize one polygon exactly as pycocotools (and so COCOeval) does."""
    rles = mask_utils.frPyObjects([polygon], size, size)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def _fits(full: np.ndarray, placed: list[dict[str, Any]]) -> bool:
    """Whether drawing ``full`` on top leaves every earlier shape visible enough."""
    for prev in placed:
        left = int((prev['visible'] & ~full).sum())
        if left < _MIN_VISIBLE_PIXELS or left < _MIN_VISIBLE_FRACTION * prev['full'].sum():
            return False
    return True


def _colour(rng: np.random.Generator, behind: list[np.ndarray], label: int) -> np.ndarray:
    """A colour of the class's hue (jittered saturation and brightness) that
    stands out from every colour behind the shape.

    Each class has its own hue (:data:`_CLASS_HUES`), as objects of one kind
    often share a colour in real data; the shape still decides the mask.
    """
    refs = np.stack([np.asarray(c, dtype=np.float64) for c in behind])
    best, best_dist = None, -1.0
    for _ in range(30):
        hue = (_CLASS_HUES[label] + rng.uniform(-_HUE_JITTER, _HUE_JITTER)) % 1.0
        rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 1.0), rng.uniform(0.45, 1.0))
        colour = np.rint(np.asarray(rgb) * 255.0)
        dist = float(np.abs(refs - colour).sum(axis=1).min())
        if dist >= 120:
            return colour.astype(np.uint8)
        if dist > best_dist:
            best, best_dist = colour, dist
    return best.astype(np.uint8)  # rare: the most distinct one tried


def _annotation(inst: dict[str, Any]) -> dict[str, Any]:
    """COCO fields of one instance: polygon if untouched, else visible-pixel RLE."""
    visible = inst['visible']
    if np.array_equal(visible, inst['full']):
        segmentation: Any = [inst['polygon']]
    else:
        rle = mask_utils.encode(np.asfortranarray(visible.astype(np.uint8)))
        segmentation = dict(size=list(rle['size']), counts=rle['counts'].decode('ascii'))
    ys, xs = np.nonzero(visible)
    x0, y0 = int(xs.min()), int(ys.min())
    return dict(
        category_id=inst['label'] + 1,
        segmentation=segmentation,
        area=int(visible.sum()),
        bbox=[x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0],
    )


def _read_json(path: Path) -> Any:
    """The parsed content of ``path``, or ``None`` if missing or unreadable."""
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON, replacing ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    with open(tmp, 'w', encoding='utf-8') as f:
        json.dump(obj, f)
    os.replace(tmp, path)
