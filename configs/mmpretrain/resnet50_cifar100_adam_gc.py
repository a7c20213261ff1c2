# CIFAR ResNet-50 with Adam on CIFAR-100 with Gradient Centralization (paper Table 2,
# column "Adam"). Differs from its baseline twin, baselines/resnet50_cifar100_adam.py,
# only in the optimizer: Adam, through the GC hooks (P(g + wd w), the authors'
# Adam_GCC), with GC on the conv weights only, as the paper's CIFAR-100 runs, and the
# twin's hyperparameters.
_base_ = './baselines/resnet50_cifar100_adam.py'
custom_imports = dict(imports=['mmgc'], allow_failed_imports=False)
optim_wrapper = dict(constructor='GCOptimWrapperConstructor', gc=dict(layers=('conv',)))
