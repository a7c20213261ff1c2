# ResNet-50 with GN on ImageNet-1k with Gradient Centralization (paper Table 3, row
# "R50GN"). Differs from its baseline twin, baselines/resnet50_gn_in1k.py, only in the
# optimizer: SGDGC with GC on the conv weights only, as the paper's ImageNet runs
# ("embed GC to SGDM on Conv layer"), with the twin's lr, momentum and decay.
_base_ = './baselines/resnet50_gn_in1k.py'
custom_imports = dict(imports=['mmgc'], allow_failed_imports=False)
optim_wrapper = dict(
    optimizer=dict(type='SGDGC'),
    constructor='GCOptimWrapperConstructor',
    gc=dict(layers=('conv',)),
)
