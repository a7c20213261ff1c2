# GC twin of mask_rcnn_tiny.py: SGDGC with GC on every conv and FC weight,
# same lr, momentum and weight decay. Nothing else differs.
_base_ = './mask_rcnn_tiny.py'
custom_imports = dict(imports=['mmgc'], allow_failed_imports=False)
optim_wrapper = dict(
    optimizer=dict(type='SGDGC'),
    constructor='GCOptimWrapperConstructor',
    gc=dict(layers=('conv', 'fc')),
)
