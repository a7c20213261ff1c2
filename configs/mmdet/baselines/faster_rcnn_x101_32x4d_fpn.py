# Baseline twin of ../faster_rcnn_x101_32x4d_fpn_gc.py: Faster R-CNN
# X101-32x4d-FPN 1x with plain SGD (paper Table 5, row "X101-32x4d", without
# GC). MMDetection's own config, unchanged: only the settings of
# ../_base_/settings.py (data root, images per GPU, lr auto-scaling, backbone
# checkpoint) are applied, and their defaults are MMDetection's values.
_base_ = [
    'mmdet::faster_rcnn/faster-rcnn_x101-32x4d_fpn_1x_coco.py',
    '../_base_/settings.py',
]
model = dict(
    backbone=dict(init_cfg=dict(checkpoint=_base_.backbone_checkpoints['resnext101_32x4d'])),
)
train_dataloader = dict(
    batch_size=_base_.samples_per_gpu, dataset=dict(data_root=_base_.coco_data_root)
)
val_dataloader = dict(dataset=dict(data_root=_base_.coco_data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=_base_.coco_data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator
auto_scale_lr = dict(enable=_base_.scale_lr_by_batch)
