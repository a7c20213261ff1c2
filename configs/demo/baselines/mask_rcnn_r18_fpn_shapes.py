# Baseline twin of ../mask_rcnn_r18_fpn_shapes_gc.py: the demo's Mask R-CNN
# R18-FPN on the synthetic shapes, trained with MMDetection's own optimizer
# (SGD, lr 0.02, momentum 0.9, weight decay 1e-4). See docs/demo.md.
_base_ = '../_base_/mask_rcnn_r18_fpn_shapes.py'
