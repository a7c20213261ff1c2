# Mask R-CNN R50-FPN 1x, AdamW with Gradient Centralization. Differs from its
# twin, baselines/mask_rcnn_r50_fpn_adamw.py, only in the optim wrapper's
# constructor and gc: the GC constructor makes AdamW see P(g) for every
# conv and FC weight, with AdamW's decoupled decay left outside the projection
# (as the paper's Table 2 treats AdamW). norm_decay_mult is kept.
_base_ = './baselines/mask_rcnn_r50_fpn_adamw.py'
custom_imports = dict(imports=['mmgc'], allow_failed_imports=False)
optim_wrapper = dict(constructor='GCOptimWrapperConstructor', gc=dict(layers=('conv', 'fc')))
