# Baseline twin of ../resnet101_cifar100_gc.py: CIFAR ResNet-101 on CIFAR-100 without
# GC (paper Table 1, column "R101"), in the paper's setting
# (../_base_/cifar100_paper.py).
_base_ = '../_base_/cifar100_paper.py'
model = dict(backbone=dict(depth=101))
