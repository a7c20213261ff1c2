# A tiny Mask R-CNN for the tool tests: the demo's Mask R-CNN R18-FPN on the
# shapes data (configs/demo/_base_/mask_rcnn_r18_fpn_shapes.py, MMDetection's
# own Mask R-CNN R50-FPN 1x config with the same code path) with the sizes of
# ./readme/tiny.py, to run in seconds on a CPU: ResNet-18 with 16 base
# channels, 32-channel FPN and heads, few RoIs (RoIAlign with the demo's one
# sampling point per bin), 64x64 images, 2 images per batch, 2 epochs
# (validated after each), no lr auto-scaling.
# The data root is set by the tests (--cfg-options, see tests/tools/).
# Its GC twin, mask_rcnn_tiny_gc.py, differs only in the optimizer.
_base_ = ['../../../configs/demo/_base_/mask_rcnn_r18_fpn_shapes.py', './readme/tiny.py']

# (The base's size variables, such as fpn_channels, keep the demo's values
# in the merged config: they sized the base's dicts, which are overridden here.)
image_size = 64
batch_size = 2
model = _base_.readme_tiny.model
train_pipeline = _base_.readme_tiny.train_dataloader.dataset.pipeline
test_pipeline = _base_.readme_tiny.val_dataloader.dataset.pipeline
train_dataloader = dict(batch_size=batch_size, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=batch_size, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

train_cfg = dict(_delete_=True, type='EpochBasedTrainLoop', max_epochs=2, val_interval=1)
param_scheduler = _base_.readme_tiny.param_scheduler
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=1),
    checkpoint=dict(_delete_=True, type='CheckpointHook', interval=1),
)
log_processor = dict(by_epoch=True, window_size=50)
auto_scale_lr = dict(enable=False, base_batch_size=16)
