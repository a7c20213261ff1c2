# Baseline twin of ../densenet121_cifar100_gc.py: MMPretrain's DenseNet-121 on
# CIFAR-100 without GC (paper Table 1, column "D121"), in the paper's setting
# (../_base_/cifar100_paper.py). MMPretrain's DenseNet has the ImageNet stem (7x7
# stride-2 conv, then a 3x3 stride-2 max pool: 32x32 images reach the last dense
# block at 1x1), not the 3x3 stem of the authors' CIFAR DenseNet, so its accuracy
# is not the paper's; compare the GC run with this twin, not with the paper's row.
_base_ = '../_base_/cifar100_paper.py'
model = dict(
    backbone=dict(_delete_=True, type='DenseNet', arch='121'),
    head=dict(in_channels=1024),
)
