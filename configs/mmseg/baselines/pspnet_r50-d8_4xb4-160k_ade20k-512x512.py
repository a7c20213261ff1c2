# Baseline twin of ../pspnet_r50-d8_4xb4-160k_ade20k-512x512_gc.py: PSPNet ResNet-50-D8 on ADE20K without GC,
# MMSegmentation 1.2's pspnet/pspnet_r50-d8_4xb4-160k_ade20k-512x512.py unchanged (SGD lr 0.01, momentum 0.9,
# decay 5e-4, poly lr; 160k iterations, 4 GPUs x 4 images, 512x512 crops). The GC paper has no
# segmentation row: this pair measures what GC does here, with no paper number to
# compare against. Data: MMSegmentation's ADE20K layout under data/.
_base_ = 'mmseg::pspnet/pspnet_r50-d8_4xb4-160k_ade20k-512x512.py'
