# Semantic segmentation on the synthetic shapes (docs/codebases.md): the shapes
# of mmgc.runtime.shapes rendered as label maps (0 background, 1-4 the shapes;
# mmgc.runtime.shapes_tasks.render_segmentation), with MMSegmentation 1.2's own
# FCN (its _base_ model, runtime and 20k schedule), shrunk for a CPU as its
# FCN R18-D8 configs do: ResNet-18 (V1c) from scratch (pretrained=None), BN
# instead of SyncBN, a 128-channel head, no auxiliary head; 128x128 input,
# 4 images per batch, data loaded in the main process; a 500-iteration poly
# schedule, validated once at the end. GC: tools/train.py CONFIG --gc.
# Its pipelines and datasets are written here, so a config that inherits it
# as 'mmgc::mmseg/demo/fcn_r18_shapes.py' builds them in the mmgc scope, which
# resolves them as MMSegmentation's (mmgc/registry.py).
_base_ = [
    'mmseg::_base_/models/fcn_r50-d8.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_20k.py',
]

data_root = 'data/shapes/'
metainfo = dict(
    classes=('background', 'circle', 'triangle', 'square', 'star'),
    palette=[(0, 0, 0), (220, 20, 60), (0, 128, 0), (0, 0, 230), (255, 160, 0)],
)
image_size = 128
batch_size = 4
max_iters = 500
seed = 0

norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=(image_size, image_size)),
    pretrained=None,
    backbone=dict(depth=18, norm_cfg=norm_cfg),
    decode_head=dict(in_channels=512, channels=128, num_classes=5, norm_cfg=norm_cfg),
    auxiliary_head=None,
)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
dataset = dict(
    type='BaseSegDataset',
    data_root=data_root,
    metainfo=metainfo,
    img_suffix='.png',
    seg_map_suffix='.png',
)
train_dataloader = dict(
    batch_size=batch_size,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        **dataset,
        data_prefix=dict(img_path='train', seg_map_path='seg/train'),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        **dataset, data_prefix=dict(img_path='val', seg_map_path='seg/val'), pipeline=test_pipeline
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

param_scheduler = [
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=max_iters, by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters),
)
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=seed, deterministic=True)
