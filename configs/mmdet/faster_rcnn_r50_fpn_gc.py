# Faster R-CNN R50-FPN 1x with Gradient Centralization (paper Table 5, row
# "R50"). Differs from its baseline twin, baselines/faster_rcnn_r50_fpn.py,
# only in the optimizer: SGDGC with GC on every conv and FC weight instead of
# SGD, with the same lr, momentum and weight decay (inherited from the twin).
_base_ = './baselines/faster_rcnn_r50_fpn.py'
custom_imports = dict(imports=['mmgc'], allow_failed_imports=False)
optim_wrapper = dict(
    optimizer=dict(type='SGDGC'),
    constructor='GCOptimWrapperConstructor',
    gc=dict(layers=('conv', 'fc')),
)
