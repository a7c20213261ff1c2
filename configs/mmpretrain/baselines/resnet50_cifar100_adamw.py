# Baseline twin of ../resnet50_cifar100_adamw_gc.py: CIFAR ResNet-50 with AdamW on
# CIFAR-100 without GC (paper Table 2, column "AdamW"), in the paper's setting
# (../_base_/cifar100_paper.py). AdamW: lr 1e-3, decoupled decay 1e-3, torch's other
# defaults, as the paper.
_base_ = '../_base_/cifar100_paper.py'
optim_wrapper = dict(optimizer=dict(_delete_=True, type='AdamW', lr=1e-3, weight_decay=1e-3))
