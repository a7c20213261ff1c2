# Baseline twin of ../vgg11_cifar100_gc.py: VGG-11 with BN (the authors' CIFAR VGG:
# five 2x2 max pools down to 1x1, then one FC layer of 512 inputs) on CIFAR-100
# without GC (paper Table 1, column "V11"), in the paper's setting
# (../_base_/cifar100_paper.py).
_base_ = '../_base_/cifar100_paper.py'
model = dict(
    backbone=dict(_delete_=True, type='VGG', depth=11, norm_cfg=dict(type='BN'), num_classes=-1),
    head=dict(in_channels=512),
)
