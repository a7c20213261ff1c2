# ../mask_rcnn_r50_fpn_gc.py with the real config's pretrained backbone
# (MMDetection's `Pretrained` init), for the README's line that points it at
# a local file with --cfg-options model.backbone.init_cfg.checkpoint=...
_base_ = '../mask_rcnn_r50_fpn_gc.py'
model = dict(
    backbone=dict(
        init_cfg=dict(_delete_=True, type='Pretrained', checkpoint='torchvision://resnet50')
    )
)
