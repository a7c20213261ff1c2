# Baseline twin of ../mask_rcnn_r50_fpn_adamw_gc.py: Mask R-CNN R50-FPN 1x
# trained with AdamW instead of SGD (not a row of the paper; its Table 2 shows
# GC helping AdamW on CIFAR-100). The model, data, schedule and settings are
# those of ../../baselines/mask_rcnn_r50_fpn.py (MMDetection's config);
# the optimizer follows MMDetection's AdamW recipes for Mask R-CNN
# (lr 1e-4, betas (0.9, 0.999), weight decay 0.05, no decay on norm layers).
_base_ = '../../mmdet/baselines/mask_rcnn_r50_fpn.py'
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0),
)
