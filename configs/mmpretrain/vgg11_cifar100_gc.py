# VGG-11 with BN (the authors' CIFAR VGG: five 2x2 max pools down to 1x1, then one FC
# layer of 512 inputs) on CIFAR-100 with Gradient Centralization (paper Table 1,
# column "V11"). Differs from its baseline twin, baselines/vgg11_cifar100.py, only in
# the optimizer: SGDGC, with GC on the conv weights only, as the paper's CIFAR-100
# runs, and the twin's hyperparameters.
_base_ = './baselines/vgg11_cifar100.py'
custom_imports = dict(imports=['mmgc'], allow_failed_imports=False)
optim_wrapper = dict(
    optimizer=dict(type='SGDGC'),
    constructor='GCOptimWrapperConstructor',
    gc=dict(layers=('conv',)),
)
