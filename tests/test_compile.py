"""``train.compile``: the switch's known answers, "off" as before bit for bit, a compiled run
against an eager one, and resume across the two."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vaescope.core import config as config_mod
from vaescope.core.config import replace
from vaescope.core.errors import VaescopeError
from vaescope.runs.checkpoint import load_checkpoint
from vaescope.training import compile as compile_mod
from vaescope.training.engine import prepare_training, train_epoch
from vaescope.training import train as train_mod
from vaescope.training.train import train

from conftest import LogLines

CPU = torch.device("cpu")


@pytest.fixture()
def caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """vaescope's and inductor's caches in a temporary folder: a test never touches ~/.cache."""
    monkeypatch.setenv("VAESCOPE_CACHE_DIR", str(tmp_path / "vaescope"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    return tmp_path


def warm_up_marker(key: str) -> None:
    """What a compiled run leaves: inductor's folder holding files, and vaescope's marker."""
    inductor = compile_mod.inductor_folder()
    inductor.mkdir(parents=True, exist_ok=True)
    (inductor / "entry").write_text("compiled")
    compile_mod.write_marker(key, 1.0)


# ---------------------------------------------------------------------------- the switch

@pytest.mark.parametrize("value", ["yes", "ON", ""])
def test_a_bad_value_is_one_line_naming_the_key(value):
    with pytest.raises(VaescopeError) as err:
        config_mod.resolve("dense16", overrides=[f"train.compile={value!r}"])
    assert "train.compile" in str(err.value) and "'auto', 'on' or 'off'" in str(err.value)
    assert "\n" not in str(err.value)


def test_the_default_is_auto_and_it_is_not_part_of_a_run_s_identity():
    config = config_mod.resolve("dense16")
    assert config.train.compile == "auto"
    off = replace(config, **{"train.compile": "off"})
    assert off == config and off.to_dict()["train"]["compile"] == "off"
    assert replace(config, **{"train.lr": 0.01}) != config  # control: other keys do count


def test_auto_compiles_with_a_warm_marker_and_enough_steps(caches):
    config = config_mod.resolve("dense16")
    warm = compile_mod.BREAK_EVEN_STEPS["dense"]["warm"]
    cold = compile_mod.BREAK_EVEN_STEPS["dense"]["cold"]
    assert warm < cold
    before = compile_mod.decide(config, CPU, False, "k1", warm + 1)
    assert (before.compile, before.warm) == (cold < warm + 1, False)
    warm_up_marker("k1")
    after = compile_mod.decide(config, CPU, False, "k1", warm + 1)
    assert (after.compile, after.warm) == (True, True)
    assert not compile_mod.decide(config, CPU, False, "k1", warm).compile  # not past the break-even
    assert not compile_mod.decide(config, CPU, False, "another key", warm + 1).warm


def test_auto_stays_eager_when_cold_and_short(caches):
    config = config_mod.resolve("dense16")
    cold = compile_mod.BREAK_EVEN_STEPS["dense"]["cold"]
    assert not compile_mod.decide(config, CPU, False, "k", cold).compile
    assert compile_mod.decide(config, CPU, False, "k", cold + 1).compile


def test_a_marker_whose_cache_is_gone_or_of_another_torch_is_cold(caches, monkeypatch):
    warm_up_marker("k")
    assert compile_mod.is_warm("k")
    (compile_mod.inductor_folder() / "entry").unlink()  # the cache emptied (a reboot of /tmp, a clean-up)
    assert not compile_mod.is_warm("k")
    warm_up_marker("k")
    monkeypatch.setattr(torch, "__version__", "2.99.0")
    assert not compile_mod.is_warm("k")


def test_off_and_unavailable_stay_eager_and_on_unavailable_is_one_line(caches):
    config = config_mod.resolve("dense16")
    off = replace(config, **{"train.compile": "off"})
    assert not compile_mod.decide(off, CPU, False, "k", 10**9).compile
    # a user's model: auto trains eagerly and says why, "on" refuses in one line naming the key
    decision = compile_mod.decide(config, CPU, True, "k", 10**9)
    assert not decision.compile and "vaescope's own" in decision.reason
    with pytest.raises(VaescopeError) as err:
        compile_mod.decide(replace(config, **{"train.compile": "on"}), CPU, True, "k", 10**9)
    assert str(err.value).startswith("train.compile is 'on' but") and "'auto' or 'off'" in str(err.value)
    assert "\n" not in str(err.value)
    stateful = replace(config, **{"loss.reconstruction": "gaussian", "loss.objective": "balanced"})
    assert not compile_mod.decide(stateful, CPU, False, "k", 10**9).compile
    assert "cuda" in compile_mod.decide(config, torch.device("cuda"), False, "k", 10**9).reason


def test_no_cxx_compiler_means_eager(caches, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler")
    monkeypatch.setattr(compile_mod.shutil, "which", lambda name: None)
    decision = compile_mod.decide(config_mod.resolve("dense16"), CPU, False, "k", 10**9)
    assert not decision.compile and "C++ compiler" in decision.reason


def test_batch_shapes_of_an_epoch():
    assert compile_mod.batch_shapes(60000, 128) == (128, 96)
    assert compile_mod.batch_shapes(512, 64) == (64,)
    assert compile_mod.batch_shapes(50, 64) == (50,)


def test_the_presets_choose(caches):
    """What "auto" does for dense16 on MNIST (469 steps an epoch): its own 10 epochs stay eager
    even on a warm cache, 30 epochs compile once warm, 150 from cold (break-evens of 24 and 137 epochs)."""
    steps_per_epoch = -(-60000 // 128)
    dense16 = config_mod.resolve("dense16")
    chosen = {}
    for epochs in (dense16.train.epochs, 30, 150):
        cold = compile_mod.decide(dense16, CPU, False, "dense16", epochs * steps_per_epoch).compile
        warm_up_marker("dense16")
        warm = compile_mod.decide(dense16, CPU, False, "dense16", epochs * steps_per_epoch).compile
        (compile_mod.cache_folder() / "dense16.json").unlink()
        chosen[epochs] = (cold, warm)
    assert chosen == {10: (False, False), 30: (False, True), 150: (True, True)}
    conv16 = config_mod.resolve("conv16")  # slower compiled: eager
    assert not compile_mod.decide(conv16, CPU, False, "conv16", 10**9).compile


# ---------------------------------------------------------------------------- "off" is the old engine

def test_off_trains_the_engine_unchanged(tiny_config, tiny_dataset, tmp_path, caches):
    """train() with train.compile = "off" ends with the weights of the engine's own loop (the code
    path of before), bit for bit, and logs nothing about compiling."""
    config = replace(tiny_config, **{"train.compile": "off", "train.epochs": 2})
    with LogLines() as lines:
        result = train(config, tmp_path / "run", dataset=tiny_dataset, progress=False)
    assert not any("compil" in line for line in lines)
    torch.set_num_threads(config.train.threads)
    setup = prepare_training(config, tiny_dataset.image_shape, CPU)
    x = torch.from_numpy(tiny_dataset.x_train)
    step = 0
    for _ in range(config.train.epochs):
        step, _ = train_epoch(setup.model, setup.optimizer, x, config.loss, config.train.batch_size,
                              setup.shuffle, setup.noise, step)
    for (name, ours), theirs in zip(result.model.state_dict().items(), setup.model.state_dict().values()):
        assert torch.equal(ours, theirs), name


def test_auto_cold_on_a_short_run_is_the_eager_run(tiny_config, tiny_dataset, tmp_path, caches):
    """A tiny 2-epoch run is far below the break-even: auto trains eagerly, the same weights as off."""
    runs = {}
    for mode in ("auto", "off"):
        config = replace(tiny_config, **{"train.compile": mode, "train.epochs": 2})
        with LogLines() as lines:
            runs[mode] = train(config, tmp_path / mode, dataset=tiny_dataset, progress=False).model
        if mode == "auto":
            assert [line for line in lines if "break-even" in line and line.startswith("training eagerly")]
    for a, b in zip(runs["auto"].parameters(), runs["off"].parameters()):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------- compiled against eager

# float32 agreement: the compiled kernels fuse and reorder the same sums (a few ulps a step) and
# Adam carries the differences on; over 2 epochs of 8 steps (one of them a partial batch) of the
# tiny dense model they stay below 1e-4 absolute on weights of size ~0.5 (measured ~1e-6).
WEIGHT_TOLERANCE = dict(rtol=1e-4, atol=1e-4)


# torch 2.13's own modules warn while dynamo imports them (torch's code, not ours)
TORCH_IMPORT_WARNINGS = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"


@pytest.mark.slow
@pytest.mark.filterwarnings(TORCH_IMPORT_WARNINGS)
def test_compiled_training_equals_eager_and_resumes_either_way(tiny_config, tiny_dataset, tmp_path, caches,
                                                                 monkeypatch):
    """Compiling (~25 s here, two batch shapes, forward and backward) gives the eager run's
    weights within float32 rounding; a run compiled for its first epoch and resumed eagerly, or
    eager then resumed compiled, ends with the same weights within the same tolerance."""
    base = replace(tiny_config, **{"train.epochs": 2, "train.batch_size": 48})  # 512 = 10 x 48 + 32
    on, off = (replace(base, **{"train.compile": m}) for m in ("on", "off"))
    eager = train(off, tmp_path / "eager", dataset=tiny_dataset, progress=False)
    assert torch.distributions.Distribution._validate_args is True  # torch's default, as the suite found it
    with LogLines() as lines:
        compiled = train(on, tmp_path / "compiled", dataset=tiny_dataset, progress=False)
    # dynamo's first compile turns distribution checks off process-wide; train puts them back
    assert torch.distributions.Distribution._validate_args is True
    assert any(line.startswith("compiled the training step for batches of 48 and 32") for line in lines)
    differ = False
    for (name, a), b in zip(compiled.model.state_dict().items(), eager.model.state_dict().values()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), err_msg=name, **WEIGHT_TOLERANCE)
        differ |= not torch.equal(a, b)
    assert differ  # control: the compiled kernels did run (bit-identical weights would mean eager)
    assert compile_mod.is_warm(next(p.stem for p in (caches / "vaescope" / "compile").glob("*.json")))

    # resume across the switch: interrupted after the epoch-1 checkpoint one way, resumed the other
    real_save = train_mod.save_checkpoint
    for first, second, name in ((on, off, "on-off"), (off, on, "off-on")):
        out, calls = tmp_path / name, []

        def interrupt_after_first(*args, **kwargs):
            calls.append(real_save(*args, **kwargs))
            if len(calls) == 1:
                raise KeyboardInterrupt  # as a user's Ctrl-C right after the epoch-1 checkpoint

        monkeypatch.setattr(train_mod, "save_checkpoint", interrupt_after_first)
        with pytest.raises(KeyboardInterrupt):
            train(first, out, dataset=tiny_dataset, progress=False)
        monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
        assert load_checkpoint(out).meta["epoch"] == 1
        resumed = train(second, out, resume=True, dataset=tiny_dataset, progress=False)
        for (key, a), b in zip(resumed.model.state_dict().items(), eager.model.state_dict().values()):
            np.testing.assert_allclose(a.numpy(), b.numpy(), err_msg=f"{name} {key}", **WEIGHT_TOLERANCE)


# ---------------------------------------------------------------------------- the bench row

def test_break_even_of_the_bench():
    from vaescope.bench.compile import break_even

    assert break_even(20.0, 0.001) == 20000
    assert break_even(20.0, 0.0015) == 13334  # rounded up: the step that has paid it back
    assert break_even(20.0, 0.0) is None and break_even(20.0, -0.001) is None  # a slower step never pays back
