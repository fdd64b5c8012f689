"""FusedAdam: the same weights and state as torch.optim.Adam(fused=True), without torch._dynamo."""

from __future__ import annotations

import subprocess
import sys

import torch

from vaescope.models.networks import DenseVAE
from vaescope.training.adam import FusedAdam
from vaescope.training.engine import make_optimizer


def _pair() -> tuple[DenseVAE, DenseVAE]:
    torch.manual_seed(0)
    a = DenseVAE((1, 8, 8), (32, 16), 4)
    b = DenseVAE((1, 8, 8), (32, 16), 4)
    b.load_state_dict(a.state_dict())
    return a, b


def _step(model: DenseVAE, optimizer: object, x: torch.Tensor, decoder_too: bool = True) -> None:
    optimizer.zero_grad(set_to_none=True)
    mu, logvar = model.encode(x)
    out = model.decode(mu).square().mean() if decoder_too else 0.0
    (out + logvar.exp().mean() + mu.square().sum()).backward()
    optimizer.step()


def test_same_weights_and_state_as_torch_adam_bit_for_bit() -> None:
    a, b = _pair()
    reference = torch.optim.Adam(a.parameters(), lr=3e-3, fused=True)
    ours = FusedAdam(b.parameters(), lr=3e-3)
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    for k in range(7):  # steps 3 and 5 leave the decoder without gradients: its state must not move
        _step(a, reference, x + k, decoder_too=k not in (3, 5))
        _step(b, ours, x + k, decoder_too=k not in (3, 5))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    theirs, mine = reference.state_dict(), ours.state_dict()
    assert mine["param_groups"] == theirs["param_groups"]
    assert mine["state"].keys() == theirs["state"].keys()
    for index, entry in theirs["state"].items():
        for key, value in entry.items():
            assert torch.equal(mine["state"][index][key], value), (index, key)
    decoder_steps = {float(s["step"]) for p, s in ours.state.items() if any(p is q for q in b.decoder.parameters())}
    assert decoder_steps == {5.0}  # 7 steps, 2 without decoder gradients


def test_state_dicts_are_interchangeable_with_torch_adam() -> None:
    a, b = _pair()
    reference = torch.optim.Adam(a.parameters(), lr=1e-3, fused=True)
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    for _ in range(3):
        _step(a, reference, x)
    b.load_state_dict(a.state_dict())
    ours = FusedAdam(b.parameters(), lr=0.5)  # the loaded state dict sets lr back to 1e-3
    ours.load_state_dict(reference.state_dict())
    assert ours.param_groups[0]["lr"] == 1e-3
    back = torch.optim.Adam(DenseVAE((1, 8, 8), (32, 16), 4).parameters(), lr=1e-3, fused=True)
    back.load_state_dict(ours.state_dict())  # torch accepts ours
    for _ in range(3):
        _step(a, reference, x)
        _step(b, ours, x)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_found_inf_skips_the_step_and_its_count() -> None:
    _, b = _pair()
    ours = FusedAdam(b.parameters(), lr=1e-2)
    x = torch.rand(16, 1, 8, 8)
    _step(b, ours, x)
    before = [p.detach().clone() for p in b.parameters()]
    ours.found_inf = torch.ones(())
    _step(b, ours, x)
    assert all(torch.equal(p, q) for p, q in zip(before, b.parameters()))
    assert {float(s["step"]) for s in ours.state.values()} == {1.0}
    ours.found_inf = torch.zeros(())
    _step(b, ours, x)
    assert not torch.equal(before[0], next(b.parameters()))
    assert {float(s["step"]) for s in ours.state.values()} == {2.0}


def test_make_optimizer_uses_it_on_the_cpu_and_training_never_imports_dynamo(tmp_path) -> None:
    assert isinstance(make_optimizer(DenseVAE((1, 8, 8), (8,), 2), 1e-3), FusedAdam)
    # torch.optim's first call imports torch._dynamo (about a second); a whole `vaescope train` must not
    code = ("import sys, numpy as np, vaescope\nfrom vaescope.training.train import train\n"
            "from vaescope.core.config import resolve\n"
            "rng = np.random.default_rng(0)\n"
            "data = vaescope.Dataset('tiny', rng.random((64, 1, 8, 8), dtype=np.float32), None,"
            " rng.random((32, 1, 8, 8), dtype=np.float32), None)\n"
            "cfg = resolve('dense16', overrides=['train.epochs=2', 'model.hidden=[16]', 'model.latent_dim=2',"
            " 'train.batch_size=16', 'train.trace_subset=16'])\n"
            f"train(cfg, {str(tmp_path / 'run')!r}, dataset=data, progress=False)\n"
            "print('torch._dynamo' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_a_stack_updated_model_by_model_gives_each_model_its_own_weights_bit_for_bit() -> None:
    """per_model=True: each model of a stack (model index first) gets what its own Adam gives it,
    whatever the stack's size. Sizes 6, 13 and 3x5 leave a scalar tail in the kernel's vector loop
    (which rounds differently from it) at a place that depends on the stack's size."""
    shapes = [(6,), (13,), (3, 5)]
    generator = torch.Generator().manual_seed(2)
    for models in (1, 2, 3):
        alone = [[torch.nn.Parameter(torch.randn(s, generator=generator)) for s in shapes] for _ in range(models)]
        stacked = [torch.nn.Parameter(torch.stack([alone[m][k].detach() for m in range(models)]))
                   for k in range(len(shapes))]
        own = [FusedAdam(params, lr=1e-2) for params in alone]
        together = FusedAdam(stacked, lr=1e-2, per_model=True)
        for _ in range(25):
            grads = [[torch.randn(s, generator=generator) for s in shapes] for _ in range(models)]
            for m in range(models):
                for p, g in zip(alone[m], grads[m]):
                    p.grad = g.clone()
                own[m].step()
            for k, p in enumerate(stacked):
                p.grad = torch.stack([grads[m][k] for m in range(models)])
            together.step()
        for k, p in enumerate(stacked):
            for m in range(models):
                assert torch.equal(p[m], alone[m][k]), (models, k, m)
                assert torch.equal(together.state[p]["exp_avg_sq"][m], own[m].state[alone[m][k]]["exp_avg_sq"])
            assert float(together.state[p]["step"]) == 25.0  # the stack's one step count, once per step
