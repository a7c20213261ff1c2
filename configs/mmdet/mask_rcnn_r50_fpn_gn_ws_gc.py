# Mask R-CNN R50-FPN GN+WS 2x with Gradient Centralization (paper Table 6,
# row "R50 GN+WS"). Differs from its baseline twin,
# baselines/mask_rcnn_r50_fpn_gn_ws.py, only in the optimizer: SGDGC with GC
# on every conv and FC weight instead of SGD, with the same lr, momentum and
# weight decay (inherited from the twin).
_base_ = './baselines/mask_rcnn_r50_fpn_gn_ws.py'
custom_imports = dict(imports=['mmgc'], allow_failed_imports=False)
optim_wrapper = dict(
    optimizer=dict(type='SGDGC'),
    constructor='GCOptimWrapperConstructor',
    gc=dict(layers=('conv', 'fc')),
)
