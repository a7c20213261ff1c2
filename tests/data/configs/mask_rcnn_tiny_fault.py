# mask_rcnn_tiny.py for the fault tests (tests/runtime/test_resume.py): no
# validation, the checkpoint hook keeps only the newest checkpoint
# (max_keep_ckpts=1, the setting where MMEngine's own hook deletes the old
# checkpoint before the new one is written), and the fault-injection hooks of
# fault_hooks.py (importable when tests/data is on PYTHONPATH; inert unless
# MMGC_FAULT is set in the environment).
_base_ = './mask_rcnn_tiny.py'
custom_imports = dict(imports=['mmgc', 'fault_hooks'], allow_failed_imports=False)
custom_hooks = [dict(type='FaultInjectionHook'), dict(type='OptimStateDumpHook')]
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=1))
val_dataloader = None
val_evaluator = None
val_cfg = None
