# Baseline twin of ../resnet50_cifar100_gc.py: CIFAR ResNet-50 with SGDM on CIFAR-100
# without GC (paper Table 2, column "SGDM"), in the paper's setting
# (../_base_/cifar100_paper.py).
_base_ = '../_base_/cifar100_paper.py'
