# Baseline twin of ../pspnet_r50-d8_4xb2-80k_cityscapes-512x1024_gc.py: PSPNet ResNet-50-D8 on Cityscapes without GC,
# MMSegmentation 1.2's pspnet/pspnet_r50-d8_4xb2-80k_cityscapes-512x1024.py unchanged (SGD lr 0.01, momentum 0.9,
# decay 5e-4, poly lr; 80k iterations, 4 GPUs x 2 images, 512x1024 crops). The GC paper has no
# segmentation row: this pair measures what GC does here, with no paper number to
# compare against. Data: MMSegmentation's Cityscapes layout under data/.
_base_ = 'mmseg::pspnet/pspnet_r50-d8_4xb2-80k_cityscapes-512x1024.py'
