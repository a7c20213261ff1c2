# ../mask_rcnn_r50_fpn_gc.py for one epoch (4 iterations), no validation: the
# stand-in of CONFIG in the README's lines that only need a run (--gc-diagnostics).
_base_ = '../mask_rcnn_r50_fpn_gc.py'
train_cfg = dict(max_epochs=1)
