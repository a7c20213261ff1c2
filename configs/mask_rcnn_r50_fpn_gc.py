# The paper's Mask R-CNN R50-FPN row with GC (Table 6), here so that
# `python tools/train.py configs/mask_rcnn_r50_fpn_gc.py` runs as the project's
# card shows it: this file only forwards to configs/mmdet/mask_rcnn_r50_fpn_gc.py
# (same name, so the same work dir and metafile entry). The rows live in
# configs/mmdet/ so that a config of yours can inherit each one as
# 'mmgc::mmdet/<name>.py' (MMEngine 0.10 wants a folder after 'mmgc::').
_base_ = './mmdet/mask_rcnn_r50_fpn_gc.py'
