"""Test helper: every rank saves its weights and the images it trained on.

MMEngine's CheckpointHook saves on rank 0 only; the distributed test needs
each rank's weights to check that DDP kept them identical, and the image
ids each rank saw to check that the ranks trained on different data.
Imported by configs/mmdet/mask_rcnn_tiny_gc_dist.py through ``custom_imports``
(the test puts this folder on PYTHONPATH).
"""

import os.path as osp

import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class RankWeightsHook(Hook):
    """Save ``rank<r>_{before,after}.pth`` (parameters, image ids) in the work dir."""

    def before_train(self, runner) -> None:
        self.img_ids = []
        self._save(runner, 'before')

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        for sample in data_batch['data_samples']:
            self.img_ids.append(int(sample.metainfo['img_id']))

    def after_train(self, runner) -> None:
        self._save(runner, 'after')

    def _save(self, runner, when: str) -> None:
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        # Parameters only: BN running statistics are per rank by design
        # (MMEngine wraps with broadcast_buffers=False).
        state = {k: v.detach().clone() for k, v in model.named_parameters()}
        torch.save(
            dict(
                state_dict=state,
                img_ids=list(self.img_ids),
                world_size=runner.world_size,
                wrapper=type(runner.model).__name__,
            ),
            osp.join(runner.work_dir, f'rank{runner.rank}_{when}.pth'),
        )
