# The tiny sizes of the tests, as one variable: the README's CPU stand-ins
# (tests/tools/test_readme_commands.py) apply all of it over a real config,
# and ../mask_rcnn_tiny.py takes its model, pipelines and schedule over the
# demo's base. One variable, so that this file can sit in a _base_ list
# beside the real config without a duplicate key: ResNet-18 with 16 base
# channels and no pretrained weights, 32-channel FPN and heads, few RoIs,
# 64x64 shapes images (tests/conftest.py's `shapes`, found through the
# environment variable MMGC_README_DATA), 2 epochs of a few iterations,
# data loaded in the main process (helpers named __* stay out of the
# merged config). Everything else is the real config's.
__data_root = '{{$MMGC_README_DATA:data/shapes/}}'
__channels = 32
__data = dict(
    data_root=__data_root,
    metainfo=dict(
        classes=('circle', 'triangle', 'square', 'star'),
        palette=[(220, 20, 60), (0, 128, 0), (0, 0, 230), (255, 160, 0)],
    ),
)
__test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='Resize', scale=(64, 64), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'),
    ),
]
__val_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        **__data,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        pipeline=__test_pipeline,
    ),
)
__evaluator = dict(ann_file=__data_root + 'annotations/instances_val.json')
readme_tiny = dict(
    model=dict(
        backbone=dict(depth=18, base_channels=16, frozen_stages=-1, norm_eval=False, init_cfg=None),
        neck=dict(in_channels=[16, 32, 64, 128], out_channels=__channels),
        rpn_head=dict(in_channels=__channels, feat_channels=__channels),
        roi_head=dict(
            bbox_roi_extractor=dict(out_channels=__channels),
            bbox_head=dict(in_channels=__channels, fc_out_channels=64, num_classes=4),
            mask_roi_extractor=dict(out_channels=__channels),
            mask_head=dict(
                num_convs=2, in_channels=__channels, conv_out_channels=__channels, num_classes=4
            ),
        ),
        train_cfg=dict(
            rpn=dict(sampler=dict(num=64)),
            rpn_proposal=dict(nms_pre=200, max_per_img=50),
            rcnn=dict(sampler=dict(num=32)),
        ),
        test_cfg=dict(rpn=dict(nms_pre=200, max_per_img=50), rcnn=dict(max_per_img=20)),
    ),
    train_dataloader=dict(
        num_workers=0,
        persistent_workers=False,
        dataset=dict(
            **__data,
            ann_file='annotations/instances_train.json',
            data_prefix=dict(img='train/'),
            pipeline=[
                dict(type='LoadImageFromFile', backend_args=None),
                dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
                dict(type='Resize', scale=(64, 64), keep_ratio=True),
                dict(type='RandomFlip', prob=0.5),
                dict(type='PackDetInputs'),
            ],
        ),
    ),
    val_dataloader=__val_dataloader,
    test_dataloader=__val_dataloader,
    val_evaluator=__evaluator,
    test_evaluator=__evaluator,
    train_cfg=dict(max_epochs=2, val_interval=2),
    param_scheduler=[
        dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=4),
        dict(type='MultiStepLR', begin=0, end=2, by_epoch=True, milestones=[1], gamma=0.1),
    ],
    default_hooks=dict(logger=dict(type='LoggerHook', interval=1)),
)
