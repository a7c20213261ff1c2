# Mask R-CNN R101-FPN GN 2x with Gradient Centralization (paper Table 6, row
# "R101 GN"). Differs from its baseline twin,
# baselines/mask_rcnn_r101_fpn_gn.py, only in the optimizer: SGDGC with GC on
# every conv and FC weight instead of SGD, with the same lr, momentum and
# weight decay (inherited from the twin).
_base_ = './baselines/mask_rcnn_r101_fpn_gn.py'
custom_imports = dict(imports=['mmgc'], allow_failed_imports=False)
optim_wrapper = dict(
    optimizer=dict(type='SGDGC'),
    constructor='GCOptimWrapperConstructor',
    gc=dict(layers=('conv', 'fc')),
)
