# MMPretrain's DenseNet-121 (its ImageNet stem, not the authors' 3x3 CIFAR stem:
# see the twin) on CIFAR-100 with Gradient Centralization (paper Table 1, column
# "D121"). Differs from its baseline twin, baselines/densenet121_cifar100.py, only
# in the optimizer: SGDGC, with GC on the conv weights only, as the paper's
# CIFAR-100 runs, and the twin's hyperparameters.
_base_ = './baselines/densenet121_cifar100.py'
custom_imports = dict(imports=['mmgc'], allow_failed_imports=False)
optim_wrapper = dict(
    optimizer=dict(type='SGDGC'),
    constructor='GCOptimWrapperConstructor',
    gc=dict(layers=('conv',)),
)
