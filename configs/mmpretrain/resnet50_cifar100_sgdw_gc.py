# CIFAR ResNet-50 with SGDW (decoupled decay) on CIFAR-100 with Gradient
# Centralization (paper Table 2, column "SGDW"). Differs from its baseline twin,
# baselines/resnet50_cifar100_sgdw.py, only in the optimizer: SGDWGC (decay outside P,
# the authors' SGDW_GCC), with GC on the conv weights only, as the paper's CIFAR-100
# runs, and the twin's hyperparameters.
_base_ = './baselines/resnet50_cifar100_sgdw.py'
custom_imports = dict(imports=['mmgc'], allow_failed_imports=False)
optim_wrapper = dict(
    optimizer=dict(type='SGDWGC'),
    constructor='GCOptimWrapperConstructor',
    gc=dict(layers=('conv',)),
)
