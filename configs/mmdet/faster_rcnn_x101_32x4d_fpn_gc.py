# Faster R-CNN X101-32x4d-FPN 1x with Gradient Centralization (paper Table 5,
# row "X101-32x4d"). Differs from its baseline twin,
# baselines/faster_rcnn_x101_32x4d_fpn.py, only in the optimizer: SGDGC with
# GC on every conv and FC weight instead of SGD, with the same lr, momentum
# and weight decay (inherited from the twin).
_base_ = './baselines/faster_rcnn_x101_32x4d_fpn.py'
custom_imports = dict(imports=['mmgc'], allow_failed_imports=False)
optim_wrapper = dict(
    optimizer=dict(type='SGDGC'),
    constructor='GCOptimWrapperConstructor',
    gc=dict(layers=('conv', 'fc')),
)
