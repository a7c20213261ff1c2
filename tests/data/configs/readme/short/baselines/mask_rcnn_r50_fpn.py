# ../../baselines/mask_rcnn_r50_fpn.py for one epoch (4 iterations), no validation:
# the stand-in of CONFIG in the README's lines that only need a run (--gc,
# --gc-diagnostics).
_base_ = '../../baselines/mask_rcnn_r50_fpn.py'
train_cfg = dict(max_epochs=1)
