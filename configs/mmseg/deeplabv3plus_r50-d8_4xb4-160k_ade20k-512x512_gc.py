# DeepLabV3+ ResNet-50-D8 on ADE20K with Gradient Centralization (no paper row: the GC
# paper has no segmentation experiment). Differs from its baseline twin,
# baselines/deeplabv3plus_r50-d8_4xb4-160k_ade20k-512x512.py (MMSegmentation's config), only in the optimizer: SGDGC,
# with GC on every conv and FC weight (the paper's detection setting), and the
# twin's hyperparameters.
_base_ = './baselines/deeplabv3plus_r50-d8_4xb4-160k_ade20k-512x512.py'
custom_imports = dict(imports=['mmgc'], allow_failed_imports=False)
optim_wrapper = dict(
    optimizer=dict(type='SGDGC'),
    constructor='GCOptimWrapperConstructor',
    gc=dict(layers=('conv', 'fc')),
)
