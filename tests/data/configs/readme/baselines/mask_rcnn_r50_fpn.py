# CPU stand-in for configs/baselines/mask_rcnn_r50_fpn.py in the README's commands
# (tests/tools/test_readme_commands.py): that config, with the sizes of
# ../tiny.py. Same file name, so its default work dir is the real one's.
_base_ = ['../../../../../configs/baselines/mask_rcnn_r50_fpn.py', '../tiny.py']
model = _base_.readme_tiny.model
train_dataloader = _base_.readme_tiny.train_dataloader
val_dataloader = _base_.readme_tiny.val_dataloader
test_dataloader = _base_.readme_tiny.test_dataloader
val_evaluator = _base_.readme_tiny.val_evaluator
test_evaluator = _base_.readme_tiny.test_evaluator
train_cfg = _base_.readme_tiny.train_cfg
param_scheduler = _base_.readme_tiny.param_scheduler
default_hooks = _base_.readme_tiny.default_hooks
