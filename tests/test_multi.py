"""train_many: models trained together keep the semantics of separate `train` runs."""


import threading
import types

import numpy as np
import pytest
import torch

from vaescope.bench.multi import multi_model_benchmark
from vaescope.core.config import replace
from vaescope.core.errors import VaescopeError
from vaescope.measures.run import run_statistics
from vaescope.models.networks import DenseVAE
from vaescope.runs.checkpoint import load_checkpoint, load_run
from vaescope.runs.files import read_metrics, read_trace
from vaescope.training import engine as engine_mod
from vaescope.training import multi as multi_mod
from vaescope.training import stacked as stacked_mod
from vaescope.training import train as train_mod
from vaescope.training import workers as workers_mod
from vaescope.training.engine import make_optimizer
from vaescope.training.multi import default_workers, group_key, plan_tasks, train_many
from vaescope.training.stacked import StackedDenseVAE, from_stacked, stack_optimizer_state, unstack_optimizer_state
from vaescope.training.train import train

QUIET = {"progress": False}
FILES = ("model.safetensors", "metrics.csv", "trace.csv", "config.json")  # timing.csv (and the manifest, its hash) differ
# Tolerance. Measured here (torch 2.13 CPU, AMD EPYC): the files of a model trained in a group are
# bit for bit those of its separate run (StackedLinear computes each model's products as nn.Linear
# does). A BLAS that blocks a batched product differently rounds differently: with autograd's own
# baddbmm backward (another summation order) weights differed by <= 3e-8 after 3 tiny epochs, and
# losses and statistics by ~1e-7 relative (float32: 2^-24 ~ 6e-8 per rounding). Asserted at 1e-5,
# 100x above that; a wrong data order, noise, beta or Adam state moves them by 1e-2 or more.
RTOL, ATOL = 1e-5, 1e-6
SAME_STEP = 1e-6  # one step from the same weights: only rounding can differ


def group_configs(tiny_config):
    """Three configs of one architecture: two seeds, and a no-sampling run with another beta."""
    return [replace(tiny_config, **{"train.seed": 0}),
            replace(tiny_config, **{"train.seed": 1}),
            replace(tiny_config, **{"train.seed": 2, "loss.sampling": False, "loss.beta": 0.5})]


@pytest.fixture(scope="module")
def separate_runs(tmp_path_factory, tiny_dataset, tiny_npz):
    """Each config of :func:`group_configs` trained alone by `train`."""
    from conftest import TINY_OVERRIDES

    from vaescope.core import config as config_mod
    tiny_config = config_mod.resolve("dense16", overrides=TINY_OVERRIDES + [f"data.source={tiny_npz}"])
    root = tmp_path_factory.mktemp("separate")
    for i, config in enumerate(group_configs(tiny_config)):
        train(config, root / f"run{i}", dataset=tiny_dataset, **QUIET)
    return root


@pytest.fixture(scope="module")
def group_runs(tmp_path_factory, tiny_dataset, tiny_npz):
    """The same configs trained together by `train_many`."""
    from conftest import TINY_OVERRIDES

    from vaescope.core import config as config_mod
    tiny_config = config_mod.resolve("dense16", overrides=TINY_OVERRIDES + [f"data.source={tiny_npz}"])
    root = tmp_path_factory.mktemp("group")
    train_many(group_configs(tiny_config), [root / f"run{i}" for i in range(3)], dataset=tiny_dataset, **QUIET)
    return root


def test_group_key_separates_shapes_and_joins_seeds(tiny_config):
    configs = group_configs(tiny_config)
    assert len({group_key(c) for c in configs}) == 1
    assert group_key(replace(tiny_config, **{"model.latent_dim": 8})) != group_key(tiny_config)
    assert group_key(replace(tiny_config, **{"train.lr": 1e-2})) != group_key(tiny_config)


def test_each_model_ends_as_its_separate_run(separate_runs, group_runs, tiny_dataset):
    for i in range(3):
        alone, together = separate_runs / f"run{i}", group_runs / f"run{i}"
        assert (alone / "config.json").read_bytes() == (together / "config.json").read_bytes()
        # the first trace point is measured on the initial weights: the same bytes, the same init
        assert read_trace(alone).mu_variance[0].tobytes() == read_trace(together).mu_variance[0].tobytes()
        a, b = load_run(alone), load_run(together)
        for key, value in a.model.state_dict().items():
            torch.testing.assert_close(b.model.state_dict()[key], value, rtol=RTOL, atol=ATOL)
        sa = run_statistics(a, "test", dataset=tiny_dataset, write=False)
        sb = run_statistics(b, "test", dataset=tiny_dataset, write=False)
        np.testing.assert_allclose(sb.mu_variance, sa.mu_variance, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(sb.sigma2_mean, sa.sigma2_mean, rtol=RTOL, atol=ATOL)
        ma, mb = read_metrics(alone), read_metrics(together)
        assert [r["step"] for r in ma] == [r["step"] for r in mb] == [8, 16, 24]
        for ra, rb in zip(ma, mb):
            for column in ("train_loss", "test_loss", "test_kl"):
                assert rb[column] == pytest.approx(ra[column], rel=RTOL, abs=ATOL), column
        ta, tb = read_trace(alone), read_trace(together)
        assert ta.steps == tb.steps
        np.testing.assert_allclose(np.array(tb.mu_variance), np.array(ta.mu_variance), rtol=RTOL, atol=ATOL)
    # three different models, not one trained thrice
    assert read_metrics(group_runs / "run0")[-1]["test_loss"] != read_metrics(group_runs / "run1")[-1]["test_loss"]


def test_each_model_sees_its_own_data_order_and_noise(tmp_path, tiny_config, tiny_dataset, monkeypatch):
    configs = [replace(c, **{"train.epochs": 1}) for c in group_configs(tiny_config)]
    alone: list[list[tuple[torch.Tensor, float]]] = []
    real_terms = engine_mod.loss_terms

    def spy_alone(model, x, loss, generator=None, z_hook=None):
        terms = real_terms(model, x, loss, generator=generator, z_hook=z_hook)
        if torch.is_grad_enabled():  # training steps, not the test evaluation
            alone[-1].append((x.clone(), terms.total.item()))
        return terms

    monkeypatch.setattr(engine_mod, "loss_terms", spy_alone)
    for i, config in enumerate(configs):
        alone.append([])
        train(config, tmp_path / f"alone{i}", dataset=tiny_dataset, **QUIET)
    together: list[tuple[torch.Tensor, torch.Tensor]] = []
    real_stacked = stacked_mod.stacked_loss_terms

    def spy_together(stack, x, losses, noises):
        terms = real_stacked(stack, x, losses, noises)
        together.append((x.clone(), terms.totals.detach().clone()))
        return terms

    monkeypatch.setattr(stacked_mod, "stacked_loss_terms", spy_together)
    train_many(configs, [tmp_path / f"together{i}" for i in range(3)], dataset=tiny_dataset, **QUIET)
    assert len(together) == len(alone[0]) == 8
    for i in range(3):
        for step, (batch, loss) in enumerate(alone[i]):
            assert torch.equal(together[step][0][i], batch), (i, step)  # the same images in the same order
            # the same noise: the same loss (bit for bit at step 1, where the weights are the same)
            assert float(together[step][1][i]) == pytest.approx(loss, rel=SAME_STEP if step == 0 else RTOL), (i, step)
    assert len({float(v) for v in together[0][1]}) == 3  # three models, not one thrice


def test_first_step_loss_equals_the_separate_runs(tiny_config, tiny_dataset):
    """Same initial weights (prepare_training), same batch and noise: the same loss (bit for bit here)."""
    from vaescope.data.batches import as_float
    from vaescope.models.objectives import loss_terms
    from vaescope.training.engine import prepare_training
    from vaescope.training.stacked import stacked_loss_terms

    configs = group_configs(tiny_config)
    setups = [prepare_training(c, tiny_dataset.image_shape, torch.device("cpu")) for c in configs]
    x = as_float(torch.from_numpy(tiny_dataset.x_train[:64]))
    stack = StackedDenseVAE([s.model for s in setups])
    noises = [torch.Generator().manual_seed(c.train.seed + 1) for c in configs]
    terms = stacked_loss_terms(stack, torch.stack([x] * 3), [c.loss for c in configs], noises)
    for i, (config, setup) in enumerate(zip(configs, setups)):
        alone = loss_terms(setup.model, x, config.loss, generator=torch.Generator().manual_seed(config.train.seed + 1))
        torch.testing.assert_close(terms.totals[i], alone.total, rtol=SAME_STEP, atol=0)
        torch.testing.assert_close(terms.regularizer[i], alone.regularizer, rtol=SAME_STEP, atol=1e-9)
        torch.testing.assert_close(terms.reconstruction[i], alone.reconstruction, rtol=SAME_STEP, atol=0)


def test_one_adam_over_stacked_parameters_is_separate_adams():
    """Adam is elementwise: one fused Adam over (M, ...) tensors = M Adams, with the same gradients."""
    torch.manual_seed(0)
    models = [DenseVAE((1, 8, 8), (32, 16), 4) for _ in range(3)]
    stack = StackedDenseVAE(models)
    optimizers = [make_optimizer(m, 1e-2) for m in models]
    stacked_optimizer = make_optimizer(stack, 1e-2)
    generator = torch.Generator().manual_seed(5)
    for _ in range(4):
        for k, parameter in enumerate(stack.stacked):
            parameter.grad = torch.randn(parameter.shape, generator=generator) * 10 ** (k % 3)
            for i, model in enumerate(models):
                p = list(model.parameters())[k]
                p.grad = from_stacked(parameter.grad[i], p).clone()
        for optimizer in optimizers:
            optimizer.step()
        stacked_optimizer.step()
    for i, model in enumerate(models):
        for k, p in enumerate(model.parameters()):
            assert torch.equal(from_stacked(stack.stacked[k][i], p), p), (i, k)
    # and the state carried to the models' own optimizers is what they hold
    fresh = [make_optimizer(m, 1e-2) for m in models]
    unstack_optimizer_state(stacked_optimizer, stack, fresh, models)
    for optimizer, own in zip(fresh, optimizers):
        for (ka, a), (kb, b) in zip(optimizer.state_dict()["state"].items(), own.state_dict()["state"].items()):
            assert ka == kb and all(torch.equal(a[name], b[name]) for name in b)
    again = make_optimizer(StackedDenseVAE(models), 1e-2)
    restacked = StackedDenseVAE(models)
    stack_optimizer_state(optimizers, models, again, restacked)
    for k, parameter in enumerate(restacked.stacked):
        assert torch.equal(again.state[parameter]["exp_avg_sq"], stacked_optimizer.state[stack.stacked[k]]["exp_avg_sq"])


def test_checkpoints_have_the_layout_of_train(separate_runs, group_runs):
    alone, together = load_checkpoint(separate_runs / "run0"), load_checkpoint(group_runs / "run0")
    for part in ("model_state", "generator_states", "extra"):
        a, b = getattr(alone, part), getattr(together, part)
        assert {k: (v.dtype, v.shape) for k, v in a.items()} == {k: (v.dtype, v.shape) for k, v in b.items()}, part
    assert alone.optimizer_state["param_groups"] == together.optimizer_state["param_groups"]
    for pid, entry in alone.optimizer_state["state"].items():
        other = together.optimizer_state["state"][pid]
        assert {k: (v.dtype, v.shape) for k, v in entry.items()} == {k: (v.dtype, v.shape) for k, v in other.items()}
    # the shuffle generator made the same draws
    assert torch.equal(alone.generator_states["shuffle"], together.generator_states["shuffle"])
    assert torch.equal(alone.generator_states["noise"], together.generator_states["noise"])


def test_a_killed_group_resumes_each_run_from_its_own_checkpoint(tmp_path, tiny_config, tiny_dataset,
                                                                monkeypatch):
    configs = group_configs(tiny_config)
    train_many(configs, [tmp_path / f"whole{i}" for i in range(3)], dataset=tiny_dataset, **QUIET)
    real_save = train_mod.save_checkpoint
    saved = []

    def killed_after_second_save(*args, **kwargs):
        path = real_save(*args, **kwargs)
        saved.append(path)
        if len(saved) == 2:  # run0 and run1 have epoch 1, run2 has nothing yet
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(train_mod, "save_checkpoint", killed_after_second_save)
    cut = [tmp_path / f"cut{i}" for i in range(3)]
    with pytest.raises(KeyboardInterrupt):
        train_many(configs, cut, dataset=tiny_dataset, **QUIET)
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    assert [load_checkpoint(c).meta["epoch"] for c in cut[:2]] == [1, 1]
    assert not (cut[2] / "checkpoints").exists()
    train_many(configs, cut, dataset=tiny_dataset, **QUIET)  # run2 alone for an epoch, then all three
    for i in range(3):
        for name in FILES:
            assert (tmp_path / f"whole{i}" / name).read_bytes() == (cut[i] / name).read_bytes(), (i, name)
    before = (cut[0] / "model.safetensors").stat().st_mtime_ns
    results = train_many(configs, cut, dataset=tiny_dataset, **QUIET)  # finished: reused
    assert (cut[0] / "model.safetensors").stat().st_mtime_ns == before
    assert [len(r.metrics) for r in results] == [3, 3, 3]


def test_a_nan_in_one_model_stops_that_run_only(tmp_path, tiny_config, tiny_dataset, monkeypatch, group_runs):
    configs = group_configs(tiny_config)
    real_stacked = stacked_mod.stacked_loss_terms
    calls = {"n": 0}

    def poisoned(stack, x, losses, noises):
        terms = real_stacked(stack, x, losses, noises)
        calls["n"] += 1
        if calls["n"] == 12:  # epoch 2 (8 steps per epoch), step 12: the loss of run1 only
            terms.totals = terms.totals * torch.tensor([1.0, float("nan"), 1.0])
        return terms

    monkeypatch.setattr(stacked_mod, "stacked_loss_terms", poisoned)
    outs = [tmp_path / f"run{i}" for i in range(3)]
    with pytest.raises(VaescopeError) as caught:
        train_many(configs, outs, dataset=tiny_dataset, **QUIET)
    assert str(caught.value) == (f"{outs[1]}: the loss became NaN or infinite at epoch 2, step 12; the last good "
                                 f"checkpoint (epoch 1) is kept in {outs[1] / 'checkpoints'}; lower train.lr or "
                                 "check the data")
    assert "\n" not in str(caught.value)
    assert not (outs[1] / "model.safetensors").exists() and load_checkpoint(outs[1]).meta["epoch"] == 1
    checkpoint = load_checkpoint(outs[1])
    assert all(torch.isfinite(t).all() for t in checkpoint.model_state.values())
    for i in (0, 2):  # the others went on, untouched: the same files as the group without the NaN
        for name in FILES:
            assert (outs[i] / name).read_bytes() == (group_runs / f"run{i}" / name).read_bytes(), (i, name)


@pytest.mark.parametrize("cut", [3, 6])  # without per_model, cut 3 fails on an AVX2 CPU
def test_a_group_cut_between_its_checkpoints_resumes_bit_for_bit(tmp_path, tiny_config, tiny_dataset, monkeypatch,
                                                                 cut):
    """Killed right after run0's checkpoint of epoch ``cut``, before run1's: run1 trains that epoch
    alone, then both together, and ends with the weights of the uninterrupted group, bit for bit.
    With 3 latent variables the encoder's last bias has 6 elements: the fused Adam kernel's scalar
    tail (which rounds unlike its vector loop) covers other elements in a stack of 1 than in one
    of 2, unless the stack is updated model by model (FusedAdam's per_model). (The case that made
    a resumed sweep differ from an uninterrupted one in its last bits.)"""
    config = replace(tiny_config, **{"model.latent_dim": 3, "train.epochs": 8})
    configs = [replace(config, **{"train.seed": seed}) for seed in (0, 1)]
    whole, parts = [tmp_path / f"whole{i}" for i in range(2)], [tmp_path / f"cut{i}" for i in range(2)]
    train_many(configs, whole, dataset=tiny_dataset, workers=1, **QUIET)
    real_save = train_mod.save_checkpoint

    def killed_after_run0_saves_epoch_cut(run_dir, *args, **kwargs):
        path = real_save(run_dir, *args, **kwargs)
        if run_dir == parts[0] and args[-1]["epoch"] == cut:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(train_mod, "save_checkpoint", killed_after_run0_saves_epoch_cut)
    with pytest.raises(KeyboardInterrupt):
        train_many(configs, parts, dataset=tiny_dataset, workers=1, **QUIET)
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    epochs = [load_checkpoint(p).meta["epoch"] if (p / "checkpoints").exists() else 0 for p in parts]
    assert epochs == [cut, cut - 1]
    train_many(configs, parts, dataset=tiny_dataset, workers=1, **QUIET)
    for i in range(2):
        assert (whole[i] / "model.safetensors").read_bytes() == (parts[i] / "model.safetensors").read_bytes(), i


def test_a_run_of_another_config_is_refused_before_anything_trains(tmp_path, tiny_config, tiny_dataset):
    configs = group_configs(tiny_config)
    other = replace(configs[1], **{"train.seed": 9})
    train(other, tmp_path / "run1", dataset=tiny_dataset, **QUIET)
    with pytest.raises(VaescopeError, match=r"run1 holds a run of another config \(train.seed differ\)"):
        train_many(configs, [tmp_path / f"run{i}" for i in range(3)], dataset=tiny_dataset, **QUIET)
    assert not (tmp_path / "run0" / "config.json").exists() and not (tmp_path / "run0" / ".lock").exists()
    with pytest.raises(VaescopeError, match="is given twice"):
        train_many(configs[:2], [tmp_path / "a", tmp_path / "a"], dataset=tiny_dataset, **QUIET)


def test_an_unbatchable_config_trains_as_train_does(tmp_path, tiny_config, tiny_dataset):
    conv = replace(tiny_config, **{"model.kind": "conv", "train.epochs": 2})
    train(conv, tmp_path / "alone", dataset=tiny_dataset, **QUIET)
    results = train_many([conv], [tmp_path / "many"], dataset=tiny_dataset, **QUIET)
    assert results[0].run_dir == tmp_path / "many"
    for name in FILES:
        assert (tmp_path / "alone" / name).read_bytes() == (tmp_path / "many" / name).read_bytes(), name


def test_unbatchable_runs_train_side_by_side_in_worker_threads(tmp_path, tiny_config, tiny_dataset):
    """Two conv runs in two worker threads (one intra-op thread each): each the run `train` gives."""
    convs = [replace(tiny_config, **{"model.kind": "conv", "train.epochs": 2, "train.seed": s}) for s in (0, 1)]
    outs = [tmp_path / f"many{s}" for s in (0, 1)]
    train_many(convs, outs, dataset=tiny_dataset, workers=2, **QUIET)
    for conv, out in zip(convs, outs):
        alone = tmp_path / f"alone{conv.train.seed}"
        train(conv, alone, dataset=tiny_dataset, **QUIET)
        for row, expected in zip(read_metrics(out), read_metrics(alone), strict=True):
            assert row == pytest.approx(expected, rel=RTOL, abs=ATOL)
        reference = load_run(alone).model.state_dict()
        for key, value in load_run(out).model.state_dict().items():
            torch.testing.assert_close(value, reference[key], rtol=RTOL, atol=ATOL)
    assert not torch.equal(load_run(outs[0]).model.encoder[0].weight, load_run(outs[1]).model.encoder[0].weight)


def test_benchmark_smoke(tiny_config, tiny_dataset):
    result = multi_model_benchmark(replace(tiny_config, **{"train.epochs": 1}), models=2, rounds=1,
                                   dataset=tiny_dataset, contenders=("together_threads", "together_processes", "apart"))
    assert result["models"] == 2 and result["worker_kind"] == multi_mod.DEFAULT_WORKER_KIND
    assert {"together_threads_seconds_per_model_epoch", "together_processes_seconds_per_model_epoch"} <= set(result)
    with pytest.raises(VaescopeError, match="give 'apart', 'together'"):
        multi_model_benchmark(tiny_config, models=2, rounds=1, dataset=tiny_dataset, contenders=("apart",))


def test_worker_threads_train_the_same_runs(tmp_path, tiny_config, tiny_dataset, group_runs):
    """Split between two threads ([run0, run2] stacked, run1 alone): the same models."""
    outs = [tmp_path / f"run{i}" for i in range(3)]
    before = torch.get_num_threads()
    results = train_many(group_configs(tiny_config), outs, dataset=tiny_dataset, workers=2, **QUIET)
    assert [r.run_dir for r in results] == outs
    assert torch.get_num_threads() == before  # the caller's setting, restored
    for i in range(3):
        for row, expected in zip(read_metrics(outs[i]), read_metrics(group_runs / f"run{i}"), strict=True):
            assert row == pytest.approx(expected, rel=RTOL, abs=ATOL)
        together = load_run(group_runs / f"run{i}").model.state_dict()
        for key, value in load_run(outs[i]).model.state_dict().items():
            torch.testing.assert_close(value, together[key], rtol=RTOL, atol=ATOL)
        assert not (outs[i] / ".lock").exists()


def test_an_interrupt_in_one_thread_stops_the_others_and_each_run_resumes(tmp_path, tiny_config, tiny_dataset,
                                                                          monkeypatch, group_runs):
    real_save = train_mod.save_checkpoint
    interrupted = threading.Event()
    stops: list[threading.Event] = []

    class StopEvent(threading.Event):  # train_many's own stop signal, seen by the test
        def __init__(self) -> None:
            super().__init__()
            stops.append(self)

    def interrupted_in_run1(out, *args, **kwargs):
        path = real_save(out, *args, **kwargs)
        if out.name == "run1":
            interrupted.set()
            raise KeyboardInterrupt  # as Ctrl-C, in the thread training run1, after its epoch-1 checkpoint
        if out.name == "run0" and not interrupted.is_set():
            assert interrupted.wait(10)  # the other thread goes on only once run1 has failed ...
            assert stops[0].wait(10)  # ... and train_many has told the threads to stop
        return path

    monkeypatch.setattr(workers_mod, "threading", types.SimpleNamespace(Event=StopEvent))
    monkeypatch.setattr(train_mod, "save_checkpoint", interrupted_in_run1)
    outs = [tmp_path / f"run{i}" for i in range(3)]
    with pytest.raises(KeyboardInterrupt):
        train_many(group_configs(tiny_config), outs, dataset=tiny_dataset, workers=2, **QUIET)
    assert load_checkpoint(outs[1]).meta["epoch"] == 1
    for out in (outs[0], outs[2]):  # the other thread stopped too, at its next step: within epoch 1 or 2
        assert not (out / "checkpoints").exists() or load_checkpoint(out).meta["epoch"] == 1
    assert all(not (out / "model.safetensors").exists() and not (out / ".lock").exists() for out in outs)
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    train_many(group_configs(tiny_config), outs, dataset=tiny_dataset, workers=2, **QUIET)
    for i in range(3):
        for name in FILES:
            assert (outs[i] / name).read_bytes() == (group_runs / f"run{i}" / name).read_bytes(), (i, name)


def test_worker_processes_train_the_same_runs_and_the_pool_is_kept(tmp_path, tiny_config, tiny_dataset, group_runs):
    """Split between two spawned processes of one thread: the same files as in one process; a
    second call of the same shape reuses the processes."""
    outs = [tmp_path / f"run{i}" for i in range(3)]
    train_many(group_configs(tiny_config), outs, dataset=tiny_dataset, workers=2, worker_kind="processes", **QUIET)
    pool = workers_mod._Pool.current
    assert pool is not None and pool.shape == (2, 1)
    for i in range(3):
        for name in FILES:
            assert (outs[i] / name).read_bytes() == (group_runs / f"run{i}" / name).read_bytes(), (i, name)
        assert not (outs[i] / ".lock").exists()
    again = [tmp_path / f"again{i}" for i in range(3)]
    train_many(group_configs(tiny_config), again, dataset=tiny_dataset, workers=2, worker_kind="processes", **QUIET)
    assert workers_mod._Pool.current is pool
    assert (again[2] / "model.safetensors").read_bytes() == (group_runs / "run2" / "model.safetensors").read_bytes()


def test_an_error_in_a_worker_process_stops_the_others_and_a_rerun_finishes(tmp_path, tiny_config, tiny_dataset):
    """Two tasks in two processes: run1 cannot write its epoch-1 checkpoint in its worker; its error
    comes back as it is, run0 (1,000 epochs) stops at its next step instead of training on, and the
    workers, idle again, train the next call."""
    outs = [tmp_path / "run0", tmp_path / "run1"]
    configs = [replace(tiny_config, **{"train.epochs": 1000}),
               replace(tiny_config, **{"model.latent_dim": 3, "train.epochs": 2})]
    outs[1].mkdir()
    (outs[1] / "checkpoints").write_text("in the way")  # a file where the checkpoints directory goes
    with pytest.raises(VaescopeError, match=f"cannot write {outs[1]}/checkpoints/epoch-0001.safetensors"):
        train_many(configs, outs, dataset=tiny_dataset, workers=2, worker_kind="processes", **QUIET)
    assert not (outs[0] / "model.safetensors").exists()
    assert not (outs[0] / "checkpoints").is_dir() or load_checkpoint(outs[0]).meta["epoch"] < 1000
    pool = workers_mod._Pool.current
    (outs[1] / "checkpoints").unlink()
    again = [outs[1], tmp_path / "other"]
    train_many([configs[1], replace(configs[1], **{"train.seed": 1})], again, dataset=tiny_dataset, workers=2,
               worker_kind="processes", **QUIET)
    assert workers_mod._Pool.current is pool and [load_checkpoint(out).meta["epoch"] for out in again] == [2, 2]


def test_an_unknown_worker_kind_is_refused(tmp_path, tiny_config, tiny_dataset):
    with pytest.raises(VaescopeError, match="worker_kind 'fibers'; give one of threads, processes"):
        train_many(group_configs(tiny_config), [tmp_path / f"r{i}" for i in range(3)], dataset=tiny_dataset,
                   workers=2, worker_kind="fibers", **QUIET)


def test_tasks_and_workers_are_chosen_from_the_configs(tiny_config, monkeypatch):
    monkeypatch.setattr(multi_mod.os, "cpu_count", lambda: 2)
    dense = [replace(tiny_config, **{"train.seed": s, "train.threads": 0}) for s in range(6)]
    conv = replace(dense[0], **{"model.kind": "conv"})
    assert default_workers(dense) == 2  # one thread per core
    assert default_workers(dense[:1]) == 1  # nothing to share
    assert default_workers([conv, conv]) == 2  # side by side, one per thread
    assert default_workers([replace(c, **{"train.threads": 1}) for c in dense]) == 1
    # each group split between the workers; a model that cannot be stacked alone; another shape apart
    wide = replace(dense[5], **{"model.latent_dim": 8})
    assert plan_tasks([*dense[:5], conv, wide], max_models=16, workers=2) == [[0, 2, 4], [1, 3], [5], [6]]
    assert plan_tasks(dense, max_models=2, workers=1) == [[0, 1], [2, 3], [4, 5]]
