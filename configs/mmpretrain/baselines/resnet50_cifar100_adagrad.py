# Baseline twin of ../resnet50_cifar100_adagrad_gc.py: CIFAR ResNet-50 with Adagrad on
# CIFAR-100 without GC (paper Table 2, column "Adagrad"), in the paper's setting
# (../_base_/cifar100_paper.py). Adagrad: lr 1e-2, decay 5e-4 (L2), torch's other
# defaults, as the paper.
_base_ = '../_base_/cifar100_paper.py'
optim_wrapper = dict(optimizer=dict(_delete_=True, type='Adagrad', lr=1e-2, weight_decay=5e-4))
