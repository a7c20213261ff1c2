# CIFAR ResNet-50 with Adagrad on CIFAR-100 with Gradient Centralization (paper Table
# 2, column "Adagrad"). Differs from its baseline twin,
# baselines/resnet50_cifar100_adagrad.py, only in the optimizer: Adagrad, through the
# GC hooks (P(g + wd w), the authors' Adagrad_GCC), with GC on the conv weights only,
# as the paper's CIFAR-100 runs, and the twin's hyperparameters.
_base_ = './baselines/resnet50_cifar100_adagrad.py'
custom_imports = dict(imports=['mmgc'], allow_failed_imports=False)
optim_wrapper = dict(constructor='GCOptimWrapperConstructor', gc=dict(layers=('conv',)))
