# Shared settings of the demo twins (../mask_rcnn_r18_fpn_shapes_gc.py and
# ../baselines/mask_rcnn_r18_fpn_shapes.py): MMDetection's own Mask R-CNN
# R50-FPN 1x config, shrunk to what the synthetic shapes data
# (mmgc.runtime.shapes.make_shapes_dataset: 128x128 images, 4 classes) and a 2-core
# CPU require, measured in docs/demo.md:
#   - ResNet-18 trained from scratch (no pretrained weights offline:
#     init_cfg=None), so its BN layers train (norm_eval=False) and no stage
#     is frozen (frozen_stages=-1);
#   - 128-channel FPN, RPN and box head, a 64-channel mask head, 256-wide
#     box FCs, 64 sampled RoIs and 200 proposals per image instead of
#     256 / 256 / 1024 / 512 / 1000 (at most 6 objects per image), RoIAlign
#     with one sampling point per bin;
#   - 128x128 input, 4 images per batch, data loaded in the main process;
#   - an iteration-based schedule (MMDetection's warm-up and two lr steps,
#     placed at the same fractions of the run as the 1x schedule's epochs 8
#     and 11), evaluated once at the end;
#   - CPU determinism for a fixed seed.
# Everything else (losses, assigners, anchors, RoI levels, NMS, the COCO
# metric) is MMDetection's.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'

# --- data: written by `python tools/run_demo.py` (or make_shapes_dataset) ---
data_root = 'data/shapes/'
metainfo = dict(
    classes=('circle', 'triangle', 'square', 'star'),
    palette=[(220, 20, 60), (0, 128, 0), (0, 0, 230), (255, 160, 0)],
)
num_classes = 4
image_size = 128
batch_size = 4

# --- schedule ---
max_iters = 750
warmup_iters = 50
seed = 0

# --- model widths and counts ---
fpn_channels = 128
fc_channels = 256
rcnn_sampled_rois = 64
num_proposals = 200
# The mask head's four convs run on every positive RoI at 14x14: at 128
# channels they were 36% of an iteration; 64 channels cut it by 31%
# (docs/demo.md, "Where the time goes").
mask_channels = 64
# RoIAlign sampling points per bin side: MMDetection's 0 takes ceil(RoI side /
# bins), up to 3x3 points per bin here. RoIs around these objects (26-64 px)
# are pooled from the stride-4 level, where a 14x14 mask bin spans at most
# about one feature cell and a 7x7 box bin about two, so one bilinear sample
# per bin keeps most of the signal; with the 64-channel mask head it made an
# iteration 18% faster than 2x2 samples (MMCV's CPU RoIAlign is
# single-threaded).
roi_align_sampling_ratio = 1

model = dict(
    backbone=dict(depth=18, frozen_stages=-1, norm_eval=False, init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=fpn_channels),
    rpn_head=dict(in_channels=fpn_channels, feat_channels=fpn_channels),
    roi_head=dict(
        bbox_roi_extractor=dict(
            roi_layer=dict(sampling_ratio=roi_align_sampling_ratio), out_channels=fpn_channels
        ),
        bbox_head=dict(
            in_channels=fpn_channels, fc_out_channels=fc_channels, num_classes=num_classes
        ),
        mask_roi_extractor=dict(
            roi_layer=dict(sampling_ratio=roi_align_sampling_ratio), out_channels=fpn_channels
        ),
        mask_head=dict(
            in_channels=fpn_channels, conv_out_channels=mask_channels, num_classes=num_classes
        ),
    ),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=1000, max_per_img=num_proposals),
        rcnn=dict(sampler=dict(num=rcnn_sampled_rois)),
    ),
    test_cfg=dict(rpn=dict(nms_pre=1000, max_per_img=num_proposals)),
)

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'),
    ),
]
train_dataloader = dict(
    batch_size=batch_size,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        pipeline=train_pipeline,
    ),
)
# val and test: the train loader's settings on the val split, one image a batch
val_dataloader = dict(
    train_dataloader,
    batch_size=1,
    dataset=dict(
        train_dataloader['dataset'],
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

train_cfg = dict(
    _delete_=True, type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters
)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=warmup_iters),
    dict(
        type='MultiStepLR',
        by_epoch=False,
        begin=0,
        end=max_iters,
        milestones=[max_iters * 8 // 12, max_iters * 11 // 12],
        gamma=0.1,
    ),
]

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1),
)
log_processor = dict(by_epoch=False, window_size=10)
randomness = dict(seed=seed, deterministic=True)
# MMDetection's lr (0.02) is set for 16 images per step; the demo steps on 4.
# MMDetection's linear scaling rule is switched on, with a base of 8 images:
# lr 0.01, twice the strictly scaled 0.005, because a from-scratch model gets
# only 1000 iterations here (measured: 0.01 learned faster, docs/demo.md).
auto_scale_lr = dict(enable=True, base_batch_size=8)
