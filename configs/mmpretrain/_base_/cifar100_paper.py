# The paper's CIFAR-100 setting (Section 5.3; the authors' GC_code/CIFAR100):
# 200 epochs at 128 images per step on one GPU, lr x 0.1 every 60 epochs, SGD
# with momentum 0.9, lr 0.1 and decay 5e-4. Built on MMPretrain 1.2's
# resnet/resnet50_8xb16_cifar100.py (the CIFAR ResNet-50: 3x3 stem, no max pool;
# random crop 32 with padding 4 and a flip, as the authors'), whose schedule
# differs (milestones 60/120/160, gamma 0.2, 8 x 16 images). The baselines in
# ../baselines/ change the model (Table 1) or the optimizer (Table 2) from here.
_base_ = 'mmpretrain::resnet/resnet50_8xb16_cifar100.py'
train_dataloader = dict(batch_size=128)
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=5e-4))
param_scheduler = dict(type='MultiStepLR', by_epoch=True, milestones=[60, 120, 180], gamma=0.1)
train_cfg = dict(by_epoch=True, max_epochs=200, val_interval=1)
auto_scale_lr = dict(base_batch_size=128)
