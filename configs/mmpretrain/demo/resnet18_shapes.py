# Classification on the synthetic shapes (docs/codebases.md): one crop per
# shape of mmgc.runtime.shapes, labelled with its class
# (mmgc.runtime.shapes_tasks.render_classification), with MMPretrain 1.2's own
# CIFAR ResNet-18 (its _base_ model, CIFAR-10 schedule and runtime), for 4
# classes at 32x32, 16 crops per batch, data loaded in the main process, 10
# epochs (lr x 0.1 after 6 and 8), validated after each. Top-1 only: 4
# classes have no top-5. GC: tools/train.py CONFIG --gc.
# Its pipelines and datasets are written here, so a config that inherits it
# as 'mmgc::mmpretrain/demo/resnet18_shapes.py' builds them in the mmgc scope,
# which resolves them as MMPretrain's (mmgc/registry.py).
_base_ = [
    'mmpretrain::_base_/models/resnet18_cifar.py',
    'mmpretrain::_base_/schedules/cifar10_bs128.py',
    'mmpretrain::_base_/default_runtime.py',
]

data_root = 'data/shapes/'
classes = ('circle', 'triangle', 'square', 'star')
image_size = 32
batch_size = 16
max_epochs = 10
seed = 0

data_preprocessor = dict(
    num_classes=len(classes),
    mean=[125.307, 122.961, 113.8575],
    std=[51.5865, 50.847, 51.255],
    to_rgb=False,
)
model = dict(head=dict(num_classes=len(classes), topk=(1,)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(image_size, image_size)),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(image_size, image_size)),
    dict(type='PackInputs'),
]
dataset = dict(type='CustomDataset', data_root=data_root, metainfo=dict(classes=classes))
train_dataloader = dict(
    batch_size=batch_size,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        **dataset, ann_file='cls/train.txt', data_prefix='cls/train', pipeline=train_pipeline
    ),
)
val_dataloader = dict(
    batch_size=batch_size,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(**dataset, ann_file='cls/val.txt', data_prefix='cls/val', pipeline=test_pipeline),
)
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1,))
test_evaluator = val_evaluator

param_scheduler = dict(type='MultiStepLR', by_epoch=True, milestones=[6, 8], gamma=0.1)
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
default_hooks = dict(logger=dict(type='LoggerHook', interval=10))
randomness = dict(seed=seed, deterministic=True)
