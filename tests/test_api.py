"""The README's Python API example, run as written (on a tiny run instead of MNIST)."""

import re
from pathlib import Path

import torch

import vaescope
from vaescope.core.config import replace
from vaescope.training.train import train

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(marker: str) -> str:
    text = README.read_text()
    match = re.search(rf"<!-- {marker} -->\s*```python\n(.*?)```", text, re.S)
    assert match, f"README lacks the {marker} example"
    return match.group(1)


def test_readme_api_example_runs(tmp_path, tiny_config, tiny_npz, capsys):
    run_dir = tmp_path / "runs" / "dense16-seed0"
    train(replace(tiny_config, **{"train.epochs": 1}), run_dir, progress=False)
    code = readme_block("api-example").replace('"runs/dense16-seed0"', repr(str(run_dir)))
    code = code.replace('load_dataset("mnist")', f"load_dataset({str(tiny_npz)!r})")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    stats = namespace["stats"]
    assert stats.n == 128 and stats.latent_dim == 4
    assert len(stats.variance_law) == 4
    assert "inactive" in capsys.readouterr().out


def test_readme_own_model_example_runs(tiny_npz):
    code = readme_block("own-model-example").replace('load_dataset("mnist")', f"load_dataset({str(tiny_npz)!r})")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    stats = namespace["stats"]
    assert stats.latent_dim == namespace["model"].latent_dim
    assert isinstance(namespace["model"], torch.nn.Module)
    assert vaescope.LatentStatistics is type(stats)


def test_the_command_line_starts_without_the_figure_libraries():
    """`vaescope train` and the API's core names load torch, not matplotlib (about 0.8 s of a command's
    start when `vaescope.sweep` was imported eagerly); the lazy names still resolve to the functions."""
    import subprocess
    import sys

    code = ("import sys, vaescope, vaescope.cli\n"
            "print('matplotlib' in sys.modules)\n"
            "from vaescope.sweeps.execute import sweep\n"
            "print(vaescope.sweep is sweep, 'matplotlib' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True", "True"]
