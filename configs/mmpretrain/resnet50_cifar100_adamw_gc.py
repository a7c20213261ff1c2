# CIFAR ResNet-50 with AdamW on CIFAR-100 with Gradient Centralization (paper Table 2,
# column "AdamW"). Differs from its baseline twin,
# baselines/resnet50_cifar100_adamw.py, only in the optimizer: AdamW, through the GC
# hooks (P(g), decay outside it, the authors' AdamW_GCC), with GC on the conv weights
# only, as the paper's CIFAR-100 runs, and the twin's hyperparameters.
_base_ = './baselines/resnet50_cifar100_adamw.py'
custom_imports = dict(imports=['mmgc'], allow_failed_imports=False)
optim_wrapper = dict(constructor='GCOptimWrapperConstructor', gc=dict(layers=('conv',)))
