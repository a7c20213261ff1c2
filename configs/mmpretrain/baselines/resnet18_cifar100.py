# Baseline twin of ../resnet18_cifar100_gc.py: CIFAR ResNet-18 on CIFAR-100 without GC
# (paper Table 1, column "R18"), in the paper's setting (../_base_/cifar100_paper.py).
_base_ = '../_base_/cifar100_paper.py'
model = dict(backbone=dict(depth=18), head=dict(in_channels=512))
