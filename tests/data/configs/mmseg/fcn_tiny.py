# A tiny FCN for the tool tests: configs/mmseg/demo/fcn_r18_shapes.py, inherited
# through the mmgc:: scope (its pipelines and datasets then build in the mmgc
# scope, which must resolve them as MMSegmentation's), shrunk to run in seconds
# on a CPU: a ResNet-18 (V1c) with 8 base channels, a one-conv 16-channel head,
# 64x64 images, 2 per batch, 2 iterations, validated and saved at the end.
# The data root is set by the tests (--cfg-options, see tests/tools/).
_base_ = 'mmgc::mmseg/demo/fcn_r18_shapes.py'

max_iters = 2
model = dict(
    data_preprocessor=dict(size=(64, 64)),
    backbone=dict(stem_channels=16, base_channels=8),
    decode_head=dict(in_channels=64, channels=16, num_convs=1),
)
train_dataloader = dict(batch_size=2)
param_scheduler = [
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=max_iters, by_epoch=False)
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=1), checkpoint=dict(type='CheckpointHook', interval=max_iters)
)
