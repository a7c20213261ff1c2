# CPU stand-in for configs/mmdet/baselines/mask_rcnn_r50_fpn.py in the README's commands
# (tests/tools/test_readme_commands.py): that config, with the sizes of
# ../tiny.py. Same file name, so its default work dir is the real one's.
_base_ = ['../../../../../configs/mmdet/baselines/mask_rcnn_r50_fpn.py', '../tiny.py']
globals().update(_base_.readme_tiny)  # every key of readme_tiny over the real config's
