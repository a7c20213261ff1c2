# mask_rcnn_tiny_gc.py for the distributed test: one epoch, no validation,
# and a hook with which every rank saves its weights (rank_weights_hook.py,
# importable when tests/data is on PYTHONPATH).
_base_ = './mask_rcnn_tiny_gc.py'
custom_imports = dict(imports=['mmgc', 'rank_weights_hook'], allow_failed_imports=False)
custom_hooks = [dict(type='RankWeightsHook')]
train_cfg = dict(max_epochs=1)
val_dataloader = None
val_evaluator = None
val_cfg = None
