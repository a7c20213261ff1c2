# mask_rcnn_tiny_gc_fault.py for the distributed fault test: one epoch
# (2 iterations per rank on 2 processes).
_base_ = './mask_rcnn_tiny_gc_fault.py'
train_cfg = dict(max_epochs=1)
