"""vaescope.models.isolation: a forward inside ``untouched`` changes nothing of the model nor of the global random
streams; each check has a control (the same action outside the block) showing it can fail."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch
from torch import nn

from vaescope.models.isolation import model_device, model_fingerprint, rng_fingerprint, untouched


def make_model() -> nn.Sequential:
    """BatchNorm + Dropout in train mode, with one BatchNorm (index 4) frozen in eval by the user."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 8),
                          nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    model.train()
    model[4].eval()
    return model


def data(seed: int = 1) -> torch.Tensor:
    return torch.randn(16, 4, generator=torch.Generator().manual_seed(seed))


def modes(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def changed(before: dict, after: dict, part: str) -> set[str]:
    return {k for k in before[part] if before[part][k] != after[part][k]}


def test_forward_inside_leaves_the_model_as_it_was_and_outside_does_not():
    model = make_model()
    reference = copy.deepcopy(model).eval()
    before = model_fingerprint(model)
    assert modes(model) == [True, True, True, True, True, False, True, True]
    x = data()
    with untouched(model):
        assert not any(modes(model))  # every submodule in eval, the frozen one included
        out = model(x)
    assert model_fingerprint(model) == before
    assert model[4].training is False and model[1].training is True  # modes restored exactly
    torch.testing.assert_close(out, reference(x), rtol=0, atol=0)  # BN running stats, no dropout: eval output
    # control: the same forward outside changes the running statistics of the training BatchNorm
    model(x)
    after = model_fingerprint(model)
    assert changed(before, after, "buffers") == {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
    assert int(model[1].num_batches_tracked) == 1 and int(model[4].num_batches_tracked) == 0


def test_global_random_states_are_restored_and_draws_resume_where_they_were():
    model = make_model()  # seeds torch itself: built before the states are set
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    before = rng_fingerprint()
    with untouched(model):
        torch.randn(100)
        np.random.rand(100)
        random.random()
    assert rng_fingerprint() == before
    after_block = (torch.randn(3), np.random.rand(3), random.random())
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    assert torch.equal(after_block[0], torch.randn(3))  # the user's stream as if the block had not run
    assert np.array_equal(after_block[1], np.random.rand(3))
    assert after_block[2] == random.random()
    # control: each draw outside the block moves its own entry of the fingerprint
    for draw, key in ((lambda: torch.randn(1), "torch"), (lambda: np.random.rand(1), "numpy"),
                      (lambda: random.random(), "python")):
        start = rng_fingerprint()
        draw()
        now = rng_fingerprint()
        assert {k for k in start if start[k] != now[k]} == {key}


def test_the_dedicated_generator_is_seeded_on_the_models_device():
    model = make_model()
    with untouched(model, seed=3) as generator:
        drawn = torch.randn(5, generator=generator)
        assert generator.device == model_device(model) == torch.device("cpu")
    assert torch.equal(drawn, torch.randn(5, generator=torch.Generator().manual_seed(3)))
    with untouched(model) as a, untouched(model) as b:  # no seed: fresh seeds from the OS
        assert a.initial_seed() != b.initial_seed()


def test_restores_on_exception():
    model = make_model()
    before, rng_before = model_fingerprint(model), rng_fingerprint()
    with pytest.raises(RuntimeError, match="inside"), untouched(model):
        model(data())
        torch.randn(10)
        np.random.rand(10)
        raise RuntimeError("inside")
    assert model_fingerprint(model) == before and rng_fingerprint() == rng_before
    assert torch.is_grad_enabled()


def test_gradients_set_before_are_unchanged_and_outputs_stay_usable_by_autograd():
    model = make_model()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.25)
    before = model_fingerprint(model)
    with untouched(model):
        assert not torch.is_grad_enabled()
        out = model(data())
    assert not out.requires_grad and model_fingerprint(model)["gradients"] == before["gradients"]
    # no_grad, not inference_mode: a tensor made inside can enter the user's next autograd graph
    assert not out.is_inference()
    weight = torch.ones(2, requires_grad=True)
    (out * weight).sum().backward()
    assert weight.grad is not None
    with torch.inference_mode():  # control: why not inference_mode
        inference_out = model.eval()(data())
    model.train()
    model[4].eval()
    with pytest.raises(RuntimeError, match="[Ii]nference tensors"):
        (inference_out * weight).sum().backward()
    # control: a forward and backward outside the block change every gradient
    model(data()).sum().backward()
    assert changed(before, model_fingerprint(model), "gradients") == set(before["gradients"])


def test_nested_blocks_each_restore_what_they_found():
    model = make_model()
    original = modes(model)
    rng_before = rng_fingerprint()
    with untouched(model, seed=1) as outer:
        first = torch.randn(2, generator=outer)
        with untouched(model, seed=2) as inner:
            torch.randn(4)
            assert not any(modes(model)) and inner is not outer
        assert not any(modes(model)) and not torch.is_grad_enabled()  # the outer block's state
        second = torch.randn(2, generator=outer)
    assert modes(model) == original and torch.is_grad_enabled() and rng_fingerprint() == rng_before
    assert torch.equal(torch.cat([first, second]), torch.randn(4, generator=torch.Generator().manual_seed(1)))


def test_plain_functions_are_guarded_for_gradients_and_random_states():
    weight = torch.ones(3, requires_grad=True)
    rng_before = rng_fingerprint()
    with untouched((lambda x: x * weight, None)) as generator:
        out = torch.randn(3) * weight
        assert generator.device == torch.device("cpu")
    assert not out.requires_grad and rng_fingerprint() == rng_before


def test_the_fingerprint_sees_each_kind_of_change():
    model = make_model()
    base = model_fingerprint(model)
    with torch.no_grad():
        model[0].weight[0, 0] += 1e-7
    assert changed(base, model_fingerprint(model), "parameters") == {"0.weight"}
    model = make_model()
    model[3].bias.requires_grad_(False)
    assert changed(base, model_fingerprint(model), "requires_grad") == {"3.bias"}
    model = make_model()
    model[2].eval()
    assert changed(base, model_fingerprint(model), "training") == {"2"}
    model = make_model()
    model[6].weight.grad = torch.zeros_like(model[6].weight)
    assert changed(base, model_fingerprint(model), "gradients") == {"6.weight"}
    assert model_fingerprint(make_model()) == base  # control: rebuilt the same, the same fingerprint


def test_a_block_in_another_thread_never_changes_a_seeded_initialisation():
    """Worker threads set up runs (seed, then draw the weights) while others measure theirs: a block
    that saves the global states and writes them back must not land between a seed and its draws.
    Without the shared lock about half of these initialisations came out different (106 of 200 in
    prepare_training, before the lock)."""
    import threading

    from vaescope.core.randomness import global_rng_kept, seeded_global_rng

    def initialise() -> torch.Tensor:
        with seeded_global_rng(3):
            return torch.cat([nn.Linear(256, 256).weight.detach().flatten() for _ in range(8)])

    reference = initialise()
    stop = threading.Event()
    probe = nn.Linear(2, 2)  # built here: building it in the thread would draw from the generator unlocked

    def measure() -> None:
        while not stop.is_set():
            with untouched(probe):
                torch.randn(64)  # a draw inside the block, as reading a DataLoader makes
            with global_rng_kept():
                torch.randn(64)

    thread = threading.Thread(target=measure)
    thread.start()
    try:
        different = sum(not torch.equal(initialise(), reference) for _ in range(100))
    finally:
        stop.set()
        thread.join()
    assert different == 0
