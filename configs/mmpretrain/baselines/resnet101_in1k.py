# Baseline twin of ../resnet101_in1k_gc.py: ResNet-101 (BN) on ImageNet-1k with plain SGD (paper
# Table 3, row "R101BN", without GC): MMPretrain 1.2's resnet/resnet101_8xb32_in1k.py,
# unchanged ("the common training settings": SGD lr 0.1, momentum 0.9, decay 1e-4,
# 100 epochs, lr x 0.1 at epochs 30, 60 and 90, 256 images per step; the paper:
# 8 GPUs x 32 images, as MMPretrain's). Data: MMPretrain's ImageNet layout under data/imagenet/.
_base_ = 'mmpretrain::resnet/resnet101_8xb32_in1k.py'
