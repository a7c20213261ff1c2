# Baseline twin of ../resnet50_gn_in1k_gc.py: ResNet-50 with GN on ImageNet-1k with plain SGD (paper
# Table 3, row "R50GN", without GC). MMPretrain 1.2's resnet/resnet50_8xb32_in1k.py
# with its backbone's BatchNorm replaced by GroupNorm (32 groups; MMPretrain ships
# no GN ResNet config), and nothing else changed: SGD lr 0.1, momentum 0.9, decay
# 1e-4, 100 epochs, lr x 0.1 at epochs 30, 60 and 90, 256 images per step (the
# paper: 4 GPUs x 64 images; MMPretrain's 8 x 32 is the same 256 per step). Data: MMPretrain's ImageNet layout under data/imagenet/.
_base_ = 'mmpretrain::resnet/resnet50_8xb32_in1k.py'
model = dict(backbone=dict(norm_cfg=dict(type='GN', num_groups=32, requires_grad=True)))
