# Baseline twin of ../mask_rcnn_r50_fpn_4conv1fc_gc.py: Mask R-CNN R50-FPN
# 4conv1fc 1x with plain SGD (paper Table 6, row "R50 (4c1f)", without GC).
# MMDetection 3.3 has no BN "R50 4conv1fc" Mask R-CNN config (its 4conv1fc
# configs all use GN), so this one is built from MMDetection's parts: its
# Mask R-CNN R50-FPN 1x config with the box head replaced by MMDetection's
# Shared4Conv1FCBBoxHead (4 shared convs + 1 FC instead of 2 FCs). Otherwise
# MMDetection's config is unchanged: only the settings of
# ../_base_/settings.py (data root, images per GPU, lr auto-scaling, backbone
# checkpoint) are applied, and their defaults are MMDetection's values.
_base_ = [
    'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
    '../_base_/settings.py',
]
model = dict(
    backbone=dict(init_cfg=dict(checkpoint=_base_.backbone_checkpoints['resnet50'])),
    roi_head=dict(
        # The box head with 4 shared 3x3 convs and 1 FC (no norm layers, as
        # in MMDetection's 4conv1fc heads without GN); everything else is the
        # R50-FPN 1x Mask R-CNN above.
        bbox_head=dict(type='Shared4Conv1FCBBoxHead', conv_out_channels=256)
    ),
)
train_dataloader = dict(
    batch_size=_base_.samples_per_gpu, dataset=dict(data_root=_base_.coco_data_root)
)
val_dataloader = dict(dataset=dict(data_root=_base_.coco_data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=_base_.coco_data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator
auto_scale_lr = dict(enable=_base_.scale_lr_by_batch)
