"""GCDiagnosticsHook in real MMEngine runners, GC against baseline, and the
Fig. 4 plot tool on what they logged."""

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch import nn
from torch.utils.data import Dataset

import mmgc  # noqa: F401
from mmgc.engine.hooks import GCDiagnosticsHook
from mmgc.runtime.gc_stats import load_gc_stats


class ToyNet(BaseModel):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 16)
        self.cls = nn.Linear(16, 3)

    def forward(self, inputs, labels=None, mode='tensor'):
        x = self.bn(self.conv(inputs)).relu().mean((2, 3))
        out = self.cls(self.head(x).relu())
        if mode == 'loss':
            return {'loss': F.cross_entropy(out, labels)}
        return out


class ToyData(Dataset):
    def __init__(self, n=32):
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 8, 8, generator=gen)
        self.y = torch.randint(0, 3, (n,), generator=gen)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return dict(inputs=self.x[i], labels=self.y[i])


def _run(work_dir, gc: bool, name: str, **hook):
    optimizer = dict(type='SGDGC' if gc else 'SGD', lr=0.1, momentum=0.9, weight_decay=1e-3)
    optim_wrapper = dict(type='OptimWrapper', optimizer=optimizer)
    if gc:
        optim_wrapper['constructor'] = 'GCOptimWrapperConstructor'
    runner = Runner(
        model=ToyNet(),
        work_dir=str(work_dir),
        experiment_name=name,
        train_dataloader=dict(
            dataset=ToyData(),
            sampler=dict(type='DefaultSampler', shuffle=False),
            batch_size=4,
            collate_fn=dict(type='default_collate'),
        ),
        optim_wrapper=optim_wrapper,
        train_cfg=dict(by_epoch=False, max_iters=8),
        custom_hooks=[dict(type='GCDiagnosticsHook', interval=2, **hook)],
        default_hooks=dict(logger=dict(type='LoggerHook', interval=4), checkpoint=None),
        visualizer=dict(
            type='Visualizer', vis_backends=[dict(type='LocalVisBackend')], name=f'vis_{name}'
        ),
        randomness=dict(seed=0),
    )
    runner.train()
    return runner


@pytest.fixture(scope='module')
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp('gc_diag')
    _run(root / 'gc', gc=True, name='diag_gc')
    _run(root / 'base', gc=False, name='diag_base')
    return root / 'gc', root / 'base'


def test_logs_fig4_stats_and_eq3_drift(two_runs):
    gc_dir, base_dir = two_runs
    gc, base = load_gc_stats(gc_dir), load_gc_stats(base_dir)
    # default layers: the first conv and the last Linear
    assert set(gc) == set(base) == {'conv', 'cls'}
    for stats in (gc, base):
        for layer in ('conv', 'cls'):
            assert [s for s, _ in stats[layer]['grad_norm']] == [2, 4, 6, 8]
            for (_, raw), (_, centralized) in zip(
                stats[layer]['grad_norm'], stats[layer]['gc_grad_norm']
            ):
                assert centralized <= raw + 1e-7  # a projection never lengthens
    # Eq. (3): the GC run keeps the weight sums, the baseline's drift
    assert max(v for _, v in gc['conv']['sum_drift']) < 1e-5
    assert max(v for _, v in base['conv']['sum_drift']) > 1e-3
    assert max(v for _, v in base['cls']['sum_drift']) > 1e-3


def test_plot_tool_writes_png(two_runs, tmp_path, tools):
    gc_dir, base_dir = two_runs
    out = tmp_path / 'fig4.png'
    tools.ok(tools.run([sys.executable, 'tools/plot_gc_stats.py', gc_dir, base_dir, '--out', out]))
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_plot_tool_names_missing_stats(tmp_path, tools):
    result = tools.run([sys.executable, 'tools/plot_gc_stats.py', tmp_path, tmp_path])
    assert result.returncode == 1
    assert f'no vis_data/scalars.json under {tmp_path}' in result.stderr


def test_explicit_layers_and_errors(tmp_path):
    _run(tmp_path, gc=True, name='diag_explicit', layers=['head'])
    assert set(load_gc_stats(tmp_path)) == {'head'}
    with pytest.raises(ValueError, match=r"layer 'bn' is not a conv or Linear module"):
        _run(tmp_path / 'bad', gc=True, name='diag_bad', layers=['bn'])
    with pytest.raises(ValueError, match='interval must be a positive int; got 0'):
        GCDiagnosticsHook(interval=0)


def test_scalars_file_format(two_runs):
    gc_dir, _ = two_runs
    (file,) = list(Path(gc_dir).glob('**/vis_data/scalars.json'))
    records = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    assert any('gc/conv/gc_grad_max' in r for r in records)
