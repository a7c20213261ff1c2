# The demo's Mask R-CNN R18-FPN on the synthetic shapes with Gradient
# Centralization: differs from its baseline twin,
# baselines/mask_rcnn_r18_fpn_shapes.py, only in the optimizer (SGDGC with GC on
# every conv and FC weight, same lr, momentum and weight decay). See docs/demo.md.
_base_ = './baselines/mask_rcnn_r18_fpn_shapes.py'
custom_imports = dict(imports=['mmgc'], allow_failed_imports=False)
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGDGC', lr=0.02, momentum=0.9, weight_decay=1e-4),
    constructor='GCOptimWrapperConstructor',
    gc=dict(layers=('conv', 'fc')),
)
