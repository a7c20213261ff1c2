# A tiny CIFAR ResNet-18 for the tool tests: configs/mmpretrain/demo/resnet18_shapes.py,
# inherited through the mmgc:: scope (its pipelines and datasets then build in the
# mmgc scope, which must resolve them as MMPretrain's), shrunk to run in seconds on
# a CPU: 16 stem and 8 base channels (the head's input: 64), 16x16 crops, 16 per batch,
# 2 iterations (by iteration), validated and saved at the end.
# The data root is set by the tests (--cfg-options, see tests/tools/).
_base_ = 'mmgc::mmpretrain/demo/resnet18_shapes.py'

image_size = 16
max_iters = 2
model = dict(backbone=dict(stem_channels=16, base_channels=8), head=dict(in_channels=64))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(image_size, image_size)),
    dict(type='PackInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=train_pipeline))
test_dataloader = val_dataloader
param_scheduler = dict(_delete_=True, type='ConstantLR', factor=1.0, by_epoch=False)
train_cfg = dict(_delete_=True, by_epoch=False, max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(by_epoch=False, interval=max_iters))
log_processor = dict(by_epoch=False)
