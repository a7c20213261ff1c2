"""GCDiagnosticsHook in real MMEngine runners, GC against baseline, and the
Fig. 4 plot tool on what they logged."""

import json
import sys
from pathlib import Path

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.optim import AmpOptimWrapper, OptimWrapper

import mmgc  # noqa: F401
from mmgc.engine.hooks import GCDiagnosticsHook
from mmgc.engine.optimizers.gc_step_hooks import attach_gc_hooks
from mmgc.engine.optimizers.sgd_gc import torch_fused_sgd_on_cpu as cpu_fused_sgd
from mmgc.runtime.gc_stats import load_gc_stats
from tests.conftest import ToyData, ToyNet


@pytest.fixture(scope='session')
def run(toy_runner):
    """``run(work_dir, gc, ...)``: the toy runner with a GCDiagnosticsHook
    (``args``: its options, interval 2 by default, and the toy runner's
    ``model``, ``data``, ``iters``: 8), SGD or SGDGC with the GC constructor,
    batches of 4."""

    def run(
        work_dir, gc: bool, optim_wrapper=None, hooks=(), checkpoint=None, load_from=None, **args
    ):
        optimizer = dict(type='SGDGC' if gc else 'SGD', lr=0.1, momentum=0.9, weight_decay=1e-3)
        if optim_wrapper is None or isinstance(optim_wrapper, dict):
            optim_wrapper = dict(type='OptimWrapper', optimizer=optimizer, **(optim_wrapper or {}))
            if gc:
                optim_wrapper['constructor'] = 'GCOptimWrapperConstructor'
        return toy_runner(
            work_dir,
            model=args.pop('model', None),
            data=args.pop('data', None),
            optim_wrapper=optim_wrapper,
            iters=args.pop('iters', 8),
            batch_size=4,
            hooks=[dict(type='GCDiagnosticsHook', **{'interval': 2, **args}), *hooks],
            default_hooks=dict(logger=dict(type='LoggerHook', interval=4), checkpoint=checkpoint),
            load_from=load_from,
            resume=load_from is not None,
        )

    return run


@pytest.fixture(scope='module')
def two_runs(tmp_path_factory, run):
    root = tmp_path_factory.mktemp('gc_diag')
    run(root / 'gc', gc=True)
    run(root / 'base', gc=False)
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


def test_explicit_layers_and_errors(tmp_path, run):
    run(tmp_path, gc=True, layers=['head'])
    assert set(load_gc_stats(tmp_path)) == {'head'}
    with pytest.raises(ValueError, match=r"layer 'bn' is not a conv or Linear module"):
        run(tmp_path / 'bad', gc=True, layers=['bn'])
    with pytest.raises(ValueError, match='interval must be a positive int; got 0'):
        GCDiagnosticsHook(interval=0)


def test_scalars_file_format(two_runs):
    gc_dir, _ = two_runs
    (file,) = list(Path(gc_dir).glob('**/vis_data/scalars.json'))
    records = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    assert any('gc/conv/gc_grad_max' in r for r in records)


def _iterations(work_dir, layer='conv', stat='grad_norm'):
    return [step for step, _ in load_gc_stats(work_dir)[layer][stat]]


@pytest.mark.parametrize(
    'interval, expected',
    [(2, [3, 6, 9, 12]), (5, [6, 12])],
)
def test_samples_the_first_step_at_or_after_each_multiple(tmp_path, run, interval, expected):
    """With accumulative_counts=3 the optimizer steps at iterations 3, 6, 9,
    12; a sample is due at each multiple of ``interval`` and taken at the
    first step at or after it (before: only at multiples of lcm(interval, 3),
    so interval=5 recorded nothing in 12 iterations)."""
    run(tmp_path, gc=True, iters=12, optim_wrapper=dict(accumulative_counts=3), interval=interval)
    assert _iterations(tmp_path) == expected
    assert _iterations(tmp_path, 'cls', 'sum_drift') == expected


needs_fused_amp = pytest.mark.skipif(
    not hasattr(torch.amp, 'GradScaler') or not cpu_fused_sgd(),
    reason=f'torch {torch.__version__} has no CPU GradScaler or no CPU fused SGD',
)


@needs_fused_amp
@pytest.mark.parametrize('gc', [True, False], ids=['gc', 'baseline'])
def test_fused_amp_records_unscaled_gradients_of_steps_taken(tmp_path, run, gc):
    """torch's fused SGD under a CPU GradScaler(1024), in MMEngine's real
    AmpOptimWrapper (bf16 autocast) and Runner, with mmgc's GC hooks or
    without. Iteration 4's batch has an inf input: the kernel skips that step
    (it is called with found_inf set) and the sample due at 4 moves to 5.
    Each recorded grad_norm is the unscaled gradient's: the scaled one the
    step was handed, divided by its scale."""
    model = ToyNet()
    weights = {'conv': model.conv.weight, 'cls': model.cls.weight}
    others = [p for n, p in model.named_parameters() if n not in ('conv.weight', 'cls.weight')]
    optimizer = torch.optim.SGD(
        [dict(params=list(weights.values()), gc=True), dict(params=others, gc=False)],
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-3,
        fused=True,
    )
    handed = []  # per step call: (scale, found_inf, {layer: norm of the scaled gradient})

    def record(opt, args, kwargs):  # registered before the GC hooks: sees the raw .grad
        norms = {k: float(torch.linalg.vector_norm(w.grad.double())) for k, w in weights.items()}
        handed.append((float(opt.grad_scale), float(opt.found_inf), norms))

    optimizer.register_step_pre_hook(record)
    if gc:
        attach_gc_hooks(optimizer)
    wrapper = AmpOptimWrapper.__new__(AmpOptimWrapper)  # refuses to build without a GPU
    OptimWrapper.__init__(wrapper, optimizer=optimizer)
    wrapper._scale_update_param = None
    wrapper.loss_scaler = torch.amp.GradScaler('cpu', init_scale=1024.0)
    wrapper.cast_dtype = torch.bfloat16
    run(
        tmp_path,
        gc=True,
        model=model,
        optim_wrapper=wrapper,
        data=ToyData(inf_at=12),  # iteration 4 reads samples 12..15
        interval=2,
    )
    assert [found for _, found, _ in handed] == [0, 0, 0, 1, 0, 0, 0, 0]
    stats = load_gc_stats(tmp_path)
    for layer in weights:
        recorded = stats[layer]['grad_norm']
        assert [step for step, _ in recorded] == [2, 5, 6, 8]
        for step, value in recorded:
            scale, _, norms = handed[step - 1]
            assert scale == 1024.0 if step < 4 else scale == 512.0
            assert value == pytest.approx(norms[layer] / scale, rel=1e-5)


class _Interrupt(Hook):
    """Stops training with an exception after iteration ``at`` (as a killed
    run stops), once its checkpoint is written."""

    priority = 'LOWEST'  # after CheckpointHook

    def __init__(self, at):
        self.at = at

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.at:
            raise KeyboardInterrupt(f'stopped after iteration {self.at}')


def test_resumed_run_samples_as_an_uninterrupted_one(tmp_path, monkeypatch, run):
    """accumulative_counts=3, interval=4: steps at 3, 6, 9, 12 sample at 6,
    9, 12. Stopped after iteration 8 (checkpoint iter_8) and resumed, the run
    has taken its last step at 6, so the sample due at 8 is taken at 9, as in
    the uninterrupted run."""
    # MMEngine 0.10.7 loads its own checkpoints with torch.load's defaults,
    # which since torch 2.6 refuse them (FIELD-NOTES section 5)
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    options = dict(iters=12, optim_wrapper=dict(accumulative_counts=3), interval=4)
    run(tmp_path / 'whole', gc=True, **options)
    assert _iterations(tmp_path / 'whole') == [6, 9, 12]
    with pytest.raises(KeyboardInterrupt, match='stopped after iteration 8'):
        run(
            tmp_path / 'cut',
            gc=True,
            hooks=[_Interrupt(8)],
            checkpoint=dict(type='CheckpointHook', interval=8, by_epoch=False),
            **options,
        )
    assert _iterations(tmp_path / 'cut') == [6]
    run(tmp_path / 'resumed', gc=True, load_from=str(tmp_path / 'cut' / 'iter_8.pth'), **options)
    assert _iterations(tmp_path / 'resumed') == [9, 12]
