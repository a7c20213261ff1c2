# Baseline twin of ../resnet50_cifar100_sgdw_gc.py: CIFAR ResNet-50 with SGDW
# (decoupled decay) on CIFAR-100 without GC (paper Table 2, column "SGDW"), in the
# paper's setting (../_base_/cifar100_paper.py). SGDW (mmgc.SGDW: torch has no SGD
# with decoupled decay): lr 0.1, momentum 0.9, decoupled decay 1e-3, as the paper.
custom_imports = dict(imports=['mmgc'], allow_failed_imports=False)
_base_ = '../_base_/cifar100_paper.py'
optim_wrapper = dict(optimizer=dict(type='SGDW', weight_decay=1e-3))
