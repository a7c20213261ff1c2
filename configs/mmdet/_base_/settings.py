# The settings people change most, in one place. Every baseline config in
# ../baselines/ applies them, and every GC config inherits its baseline, so an
# edit here reaches all 22 configs. The defaults equal MMDetection's own values:
# with them, a baseline is exactly MMDetection's packaged config (the 4conv1fc
# one is built from MMDetection's parts: see its header).
#
# For one run only, override the applied values instead, e.g.
#   python tools/train.py configs/mmdet/mask_rcnn_r50_fpn_gc.py --cfg-options \
#       train_dataloader.batch_size=4 \
#       model.backbone.init_cfg.checkpoint=/models/resnet50.pth
# (changing the variables below on the command line has no effect: they are
# read when the baseline file is loaded).

# COCO 2017 root: holds train2017/, val2017/ and annotations/ (with
# instances_train2017.json and instances_val2017.json).
coco_data_root = 'data/coco/'

# Training images per GPU. MMDetection's lr (0.02) is set for a total batch of
# 16 images (8 GPUs x 2 images), the paper's setup.
samples_per_gpu = 2

# MMDetection's lr scaling rule (MMEngine's `auto_scale_lr`): when True, the
# runner multiplies the lr by (number of GPUs x samples_per_gpu) / 16 at
# start-up. Equivalent to passing --auto-scale-lr to tools/train.py.
scale_lr_by_batch = False

# Pretrained backbone weights, one entry per backbone the configs use. The
# defaults are MMDetection's; `torchvision://` and `open-mmlab://` names are
# downloaded on first use into $TORCH_HOME/hub/checkpoints (`torchvision://`
# also needs torchvision installed). For an offline machine, copy the files
# there, or replace a value with a local path.
backbone_checkpoints = dict(
    resnet50='torchvision://resnet50',
    resnet101='torchvision://resnet101',
    resnext101_32x4d='open-mmlab://resnext101_32x4d',
    resnext101_64x4d='open-mmlab://resnext101_64x4d',
    # caffe-style ResNet-101 with GN (Detectron), for mask_rcnn_r101_fpn_gn
    resnet101_gn='open-mmlab://detectron/resnet101_gn',
    # ResNet-50 with GN + weight standardization, for mask_rcnn_r50_fpn_gn_ws
    resnet50_gn_ws='open-mmlab://jhu/resnet50_gn_ws',
)
