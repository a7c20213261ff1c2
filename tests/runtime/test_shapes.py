"""Tests of the synthetic COCO-format shapes dataset."""

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mmgc.runtime.shapes import SHAPES_CLASSES, make_shapes_dataset

SMALL = dict(num_train=6, num_val=4, image_size=64, seed=3)
# sha256 of SMALL's annotation files and pixels, as made by the generator of mmgc 0.2.0
PINNED = '3bc2b8706a98ec7a1b846b111fa9fff4321b7208615f3155550819ae134feff6'


@pytest.fixture(scope='module')
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp('shapes')
    return make_shapes_dataset(root, **SMALL)


def _load(path):
    with open(path, encoding='utf-8') as f:
        return json.load(f)


def test_layout_and_counts(small):
    assert small['generated'] is True
    assert small['classes'] == SHAPES_CLASSES
    root = Path(small['data_root'])
    assert Path(small['train_ann']) == root / small['train_ann_file']
    assert Path(small['val_img_dir']) == root / small['val_img_prefix'].rstrip('/')
    for split, count in (('train', 6), ('val', 4)):
        coco = _load(small[f'{split}_ann'])
        assert len(coco['images']) == count
        assert [c['name'] for c in coco['categories']] == list(SHAPES_CLASSES)
        for img in coco['images']:
            pixels = np.asarray(Image.open(Path(small[f'{split}_img_dir']) / img['file_name']))
            assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8


def test_same_seed_same_data_other_seed_other_data(small, tmp_path):
    again = make_shapes_dataset(tmp_path / 'again', **SMALL)
    other = make_shapes_dataset(tmp_path / 'other', **{**SMALL, 'seed': 4})
    for split in ('train', 'val'):
        first, second = _load(small[f'{split}_ann']), _load(again[f'{split}_ann'])
        assert first == second
        assert first['annotations'] != _load(other[f'{split}_ann'])['annotations']
        for img in first['images']:
            a = np.asarray(Image.open(Path(small[f'{split}_img_dir']) / img['file_name']))
            b = np.asarray(Image.open(Path(again[f'{split}_img_dir']) / img['file_name']))
            np.testing.assert_array_equal(a, b)


def test_output_is_pinned(small):
    """The files' content is that of the generator the demo's numbers were made
    with (annotation files byte for byte, images pixel for pixel)."""
    digest = hashlib.sha256()
    for split in ('train', 'val'):
        digest.update(Path(small[f'{split}_ann']).read_bytes())
        for path in sorted(Path(small[f'{split}_img_dir']).glob('*.png')):
            digest.update(np.asarray(Image.open(path)).tobytes())
    assert digest.hexdigest() == PINNED


def test_image_i_does_not_depend_on_the_split_size(small, tmp_path):
    more = make_shapes_dataset(tmp_path / 'more', **{**SMALL, 'num_train': 9})
    first, bigger = _load(small['train_ann']), _load(more['train_ann'])
    assert bigger['images'][:6] == first['images']
    assert bigger['annotations'][: len(first['annotations'])] == first['annotations']


def test_masks_are_exact_and_match_the_pixels(small):
    coco = COCO(small['train_ann'])
    kinds = set()
    for ann in coco.dataset['annotations']:
        kinds.add('polygon' if isinstance(ann['segmentation'], list) else 'rle')
        mask = coco.annToMask(ann).astype(bool)
        assert int(mask.sum()) == ann['area'] > 0
        ys, xs = np.nonzero(mask)
        x0, y0 = int(xs.min()), int(ys.min())
        assert ann['bbox'] == [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0]
        img = coco.loadImgs(ann['image_id'])[0]
        pixels = np.asarray(Image.open(Path(small['train_img_dir']) / img['file_name']))
        # One flat colour per shape plus noise of at most +-6 per channel.
        spread = pixels[mask].astype(int).max(axis=0) - pixels[mask].min(axis=0)
        assert spread.max() <= 12, (ann['id'], spread)
    # Seed 3 at 64px has both an untouched shape and a covered one.
    assert kinds == {'polygon', 'rle'}
    # Instances of one image never share a pixel (masks are modal).
    for image_id in coco.getImgIds():
        masks = [coco.annToMask(a) for a in coco.loadAnns(coco.getAnnIds(image_id))]
        assert np.sum(masks, axis=0).max() == 1


@pytest.mark.parametrize('iou_type', ['bbox', 'segm'])
def test_cocoeval_of_ground_truth_as_detections_is_perfect(small, iou_type):
    gt = COCO(small['val_ann'])
    dets = []
    for ann in gt.dataset['annotations']:
        det = dict(image_id=ann['image_id'], category_id=ann['category_id'], score=1.0)
        if iou_type == 'bbox':
            det['bbox'] = ann['bbox']
        else:
            rle = gt.annToRLE(ann)
            counts = rle['counts']  # bytes from frPyObjects, str when stored as RLE
            det['segmentation'] = dict(
                size=rle['size'], counts=counts.decode() if isinstance(counts, bytes) else counts
            )
        dets.append(det)
    evaluator = COCOeval(gt, gt.loadRes(copy.deepcopy(dets)), iou_type)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    ap, ap50, ap75 = evaluator.stats[:3]
    assert ap == pytest.approx(1.0) and ap50 == pytest.approx(1.0)
    assert ap75 == pytest.approx(1.0)
    # A detector that shifts every box by a few pixels must score lower:
    # the evaluation is not trivially 1.0.
    if iou_type == 'bbox':
        for det in dets:
            x, y, w, h = det['bbox']
            det['bbox'] = [x + max(2, w // 3), y, w, h]
        worse = COCOeval(gt, gt.loadRes(dets), iou_type)
        worse.evaluate()
        worse.accumulate()
        worse.summarize()
        assert worse.stats[0] < 0.9


def test_reuse_and_regeneration(tmp_path):
    root = tmp_path / 'data'
    first = make_shapes_dataset(root, **SMALL)
    stamp = Path(first['train_ann']).stat().st_mtime_ns
    second = make_shapes_dataset(root, **SMALL)
    assert first['generated'] and not second['generated']
    assert Path(first['train_ann']).stat().st_mtime_ns == stamp
    # Other parameters: regenerated, stale images removed.
    third = make_shapes_dataset(root, **{**SMALL, 'num_train': 2})
    assert third['generated']
    assert sorted(p.name for p in Path(third['train_img_dir']).iterdir()) == [
        '000000.png',
        '000001.png',
    ]
    # A missing image means the folder is not complete: regenerated.
    (Path(third['train_img_dir']) / '000001.png').unlink()
    assert make_shapes_dataset(root, **{**SMALL, 'num_train': 2})['generated']


def test_refuses_a_folder_it_did_not_write(tmp_path):
    (tmp_path / 'annotations').mkdir()
    with pytest.raises(FileExistsError, match='shapes_manifest.json'):
        make_shapes_dataset(tmp_path, **SMALL)


@pytest.mark.parametrize(
    'kwargs, match',
    [
        (dict(num_train=0), 'num_train must be an int >= 1; got 0'),
        (dict(num_val=2.5), 'num_val must be an int >= 1; got 2.5'),
        (dict(image_size=16), 'image_size must be an int >= 32; got 16'),
        (dict(seed=-1), 'seed must be an int >= 0; got -1'),
        (dict(seed=True), 'seed must be an int >= 0; got True'),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_shapes_dataset(tmp_path, **{**SMALL, **kwargs})
    assert not (tmp_path / 'shapes_manifest.json').exists()


def test_rle_counts_are_text(small):
    # MMDetection's LoadAnnotations only accepts str or list RLE counts.
    for ann in _load(small['train_ann'])['annotations']:
        if isinstance(ann['segmentation'], dict):
            assert isinstance(ann['segmentation']['counts'], str)
            decoded = mask_utils.decode(
                {**ann['segmentation'], 'counts': ann['segmentation']['counts'].encode()}
            )
            assert int(decoded.sum()) == ann['area']
