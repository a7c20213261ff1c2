# GC twin of mask_rcnn_tiny_fault.py (the optimizer block of
# mask_rcnn_tiny_gc.py); nothing else differs.
_base_ = './mask_rcnn_tiny_fault.py'
optim_wrapper = dict(
    optimizer=dict(type='SGDGC'),
    constructor='GCOptimWrapperConstructor',
    gc=dict(layers=('conv', 'fc')),
)
