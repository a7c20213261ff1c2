# Baseline twin of ../resnet50_in1k_gc.py: ResNet-50 (BN) on ImageNet-1k with plain SGD (paper
# Table 3, row "R50BN", without GC): MMPretrain 1.2's resnet/resnet50_8xb32_in1k.py,
# unchanged ("the common training settings": SGD lr 0.1, momentum 0.9, decay 1e-4,
# 100 epochs, lr x 0.1 at epochs 30, 60 and 90, 256 images per step; the paper:
# 4 GPUs x 64 images; MMPretrain's 8 x 32 is the same 256 per step). Data: MMPretrain's ImageNet layout under data/imagenet/.
_base_ = 'mmpretrain::resnet/resnet50_8xb32_in1k.py'
