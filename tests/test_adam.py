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
