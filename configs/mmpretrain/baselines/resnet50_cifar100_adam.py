# Baseline twin of ../resnet50_cifar100_adam_gc.py: CIFAR ResNet-50 with Adam on
# CIFAR-100 without GC (paper Table 2, column "Adam"), in the paper's setting
# (../_base_/cifar100_paper.py). Adam: lr 1e-3, decay 5e-4 (L2), torch's other
# defaults, as the paper.
_base_ = '../_base_/cifar100_paper.py'
optim_wrapper = dict(optimizer=dict(_delete_=True, type='Adam', lr=1e-3, weight_decay=5e-4))
