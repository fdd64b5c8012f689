"""Configuration: frozen dataclasses, TOML presets and dotted ``key=value`` overrides.

A config is plain data. It is resolved once (preset -> user TOML -> ``--set`` overrides ->
command-line flags), validated, and written as ``config.json`` into every run directory and into
every checkpoint, so that a run can always be rebuilt from its own files.
"""

from __future__ import annotations

import dataclasses
import json
import re
import reprlib
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, get_type_hints

from vaescope.core.errors import VaescopeError
from vaescope.core.storage import read_text


@dataclass(frozen=True)
class DataConfig:
    # "mnist" (embedded default), "fashion-mnist", a directory of IDX files, or an .npz path.
    source: str = "mnist"
    # The most bytes one data file may hold once decompressed (an IDX file, the arrays of an .npz
    # together, the MNIST pickle): a header or zip directory promising more is refused before
    # anything is allocated, a stream yielding more is cut off. 4 GiB: ~20x all of MNIST as float32.
    max_bytes: int = 4 * 2**30
    # Binary pixels, as the likelihood literature reads MNIST: "none" (grey levels), "dynamic" (a
    # fresh Bernoulli sample of every training batch) or "static" (one fixed sample of each image).
    # With either, the test split is one fixed sample (vaescope.data.dataset.split_images).
    binarize: str = "none"


@dataclass(frozen=True)
class ModelConfig:
    # A kind of vaescope.models.networks.MODEL_KINDS: "dense" (MLP encoder and mirrored decoder) or "conv"
    # (for images whose sides divide by 4); "custom" marks a model object passed to train().
    kind: str = "dense"
    # "package.module:function" of a model of your own, called as function(image_shape, model_config);
    # when set, it is used instead of `kind`. Importing it runs your code.
    factory: str = ""
    latent_dim: int = 16
    # Dense: hidden layer widths of the encoder; the decoder mirrors them (784-256-64-32-16).
    hidden: tuple[int, ...] = (256, 64, 32)
    # Conv: channels of the two stride-2 convolutions, and the width of the dense layer after them.
    conv_channels: tuple[int, ...] = (16, 32)
    conv_dense: int = 256


@dataclass(frozen=True)
class LossConfig:
    # "bernoulli": BCE with logits summed over pixels; "gaussian": squared error summed over pixels.
    reconstruction: str = "bernoulli"
    # Weight of the KL term (beta-VAE); 1 is the ELBO.
    beta: float = 1.0
    # False: z = mu (no sampling) and the penalty is beta * mu^2 / 2, the KL article's ablation.
    # sampling = false with beta = 0 is a plain autoencoder.
    sampling: bool = True
    # How a Gaussian decoder's variance is set (vaescope.models.objectives.DecoderVariance):
    # "elbo" keeps `variance`; "balanced" (Asperti & Trentin 2020) uses the running mean squared
    # error; "optimal-variance" (Rybkin et al. 2021) each batch's mean squared error;
    # "learned-variance" one scalar trained with the model. All but "elbo" need reconstruction = "gaussian".
    objective: str = "elbo"
    # The Gaussian decoder's variance ("elbo"), and where "balanced" and "learned-variance" start.
    variance: float = 0.5
    # The Gaussian decoder's mean: "sigmoid" of its output (images in [0, 1]), or "identity", the
    # output itself (vectors of any range, e.g. --data vectors.npz with x_train (N, D) float).
    link: str = "sigmoid"
    # "balanced": the weight of each batch's mean squared error in the running mean (theirs: 0.01).
    balance_rate: float = 0.01


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    # Checkpoint (weights, optimizer, RNG) every this many epochs; the last one is always kept.
    checkpoint_every: int = 1
    # Record per-variable Var(mu) and mean sigma^2 every this many minibatches; 0 = about
    # `trace_points` points over the whole run.
    trace_every: int = 0
    trace_points: int = 300
    # Size of the fixed held-out subset (first test images) the trace is estimated on.
    trace_subset: int = 1000
    # Torch intra-op threads; 0 = all cores.
    threads: int = 0
    # "auto" picks CUDA when present, else CPU.
    device: str = "auto"
    # torch.compile of the training step's loss (forward and backward; vaescope.training.compile):
    # "off" trains eagerly, as before; "on" compiles (an error where it cannot: a user's model, a
    # stateful loss.objective, no C++ compiler, Windows, a GPU); "auto" compiles where the run's
    # remaining steps pay the compilation back, by break-evens measured on 2 cores, with inductor's
    # cache kept in ~/.cache/vaescope/compile (warm: these shapes compiled before on this machine and
    # torch). How a run is computed, not what it computes: a run resumes under any value.
    compile: str = field(default="auto", compare=False)


@dataclass(frozen=True)
class StatsConfig:
    # Inactive when Var_X(mu) < this: the active-unit criterion of Burda et al. (2015).
    mu_variance_threshold: float = 0.01
    # Other criteria shown beside it: posterior variance near the prior, and KL near zero (nats).
    sigma2_threshold: float = 0.8
    kl_threshold: float = 0.01


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    # The preset this config started from, for reports ("custom" when none).
    name: str = "custom"

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_to_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------- presets

def preset_names() -> list[str]:
    """Names of the presets shipped with vaescope (``presets/*.toml``)."""
    folder = resources.files("vaescope.core") / "presets"
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_preset(name: str) -> dict[str, Any]:
    folder = resources.files("vaescope.core") / "presets"
    resource = folder / f"{name}.toml"
    if not resource.is_file():
        raise VaescopeError(
            f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}"
        )
    return tomllib.loads(resource.read_text(encoding="utf-8"))


TOML_MAX_BYTES = 2**20  # a config is a few hundred bytes; a larger file is not one


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    text = read_text(path, "config file", TOML_MAX_BYTES, missing="check the --config path",
                     too_large="a vaescope config is a few hundred bytes: check the --config path")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise VaescopeError(f"config file {path} is not valid TOML: {err}") from err
    except RecursionError as err:  # tomllib recurses once per nesting level
        raise VaescopeError(f"config file {path} nests arrays or tables too deeply; flatten it") from err


# ---------------------------------------------------------------------------- building

def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``section.key=value``; the value is read as TOML (``3``, ``0.5``, ``false``, ``[8, 4]``),
    falling back to a bare string (``source=fashion-mnist``)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise VaescopeError(f"--set {text!r} is not of the form section.key=value, e.g. train.epochs=20")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    except RecursionError:
        raise VaescopeError(f"--set {key}: the value nests too deeply; give a number, a string or a flat list") from None
    return key, value


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise VaescopeError(f"--set {dotted}: {part!r} is not a section")
    node[parts[-1]] = value


def from_dict(tree: Mapping[str, Any], origin: str = "config") -> Config:
    """Build and validate a :class:`Config` from nested plain data (TOML or JSON)."""
    return validate(_build(Config, tree, origin, prefix=""))


def _build(cls: type, tree: Mapping[str, Any], origin: str, prefix: str) -> Any:
    if not isinstance(tree, Mapping):
        raise VaescopeError(f"{origin}: {prefix.rstrip('.') or 'top level'} must be a table of keys")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(tree) - names)
    if unknown:
        key = prefix + unknown[0]
        raise VaescopeError(
            f"{origin}: unknown key {key!r}; valid keys here are: "
            + ", ".join(prefix + n for n in sorted(names))
        )
    kwargs = {}
    for name, value in tree.items():
        hint = hints[name]
        key = prefix + name
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, origin, key + ".")
        else:
            kwargs[name] = _coerce(value, hint, key, origin)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str, origin: str) -> Any:
    def bad(expected: str) -> VaescopeError:
        return VaescopeError(f"{origin}: {key} must be {expected}, got {reprlib.repr(value)}")

    if hint is bool:
        if isinstance(value, bool):
            return value
        raise bad("true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad("an integer")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad("a number")
    if hint is str:
        if isinstance(value, str):
            return value
        raise bad("a string")
    if hint == tuple[int, ...]:
        if isinstance(value, (list, tuple)) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            return tuple(value)
        raise bad("a list of integers, e.g. [256, 64, 32]")
    raise AssertionError(f"unsupported config type {hint} for {key}")  # a bug, not user input


# train.compile: vaescope.training.compile.decide resolves each.
COMPILE_MODES = ("auto", "on", "off")
# Keys that choose how a run is computed, not what it computes: configs differing only here are
# the same run (a run resumes under another value; see vaescope.runs.files.resolve_run_config).
EXECUTION_KEYS = ("train.compile",)

# loss.objective: vaescope.models.objectives.DecoderVariance implements each.
OBJECTIVES = ("elbo", "balanced", "optimal-variance", "learned-variance")

# The default run directory is runs/<name>-seed<S>: a name must not be able to climb out of it.
_RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")


def validate(config: Config) -> Config:
    """Refuse values no run could use, with one line naming the key and the fix."""
    m, loss, t, s = config.model, config.loss, config.train, config.stats

    def need(ok: bool, key: str, fix: str) -> None:
        if not ok:
            raise VaescopeError(f"invalid config: {key} {fix}")

    need(_RUN_NAME.fullmatch(config.name) is not None, "name",
         f"is {reprlib.repr(config.name)}; it names the run directory: use 1 to 100 letters, digits, '.', '-' "
         "or '_', not starting with '.'")
    need(bool(m.kind) and m.kind.replace("_", "").isalnum(), "model.kind",
         f"is {m.kind!r}; use 'dense' or 'conv' (vaescope.models.networks.MODEL_KINDS)")
    need(not m.factory or m.factory.count(":") == 1, "model.factory",
         f"is {m.factory!r}; use package.module:function")
    need(config.data.binarize in ("none", "dynamic", "static"), "data.binarize",
         f"is {config.data.binarize!r}; use 'none', 'dynamic' or 'static'")
    need(config.data.max_bytes >= 1, "data.max_bytes",
         f"is {config.data.max_bytes}; give the most bytes a data file may hold, e.g. {DataConfig.max_bytes}")
    need(m.latent_dim >= 1, "model.latent_dim", f"is {m.latent_dim}; it must be at least 1")
    need(all(h >= 1 for h in m.hidden), "model.hidden", f"is {list(m.hidden)}; every width must be at least 1")
    need(len(m.conv_channels) == 2 and all(c >= 1 for c in m.conv_channels), "model.conv_channels",
         f"is {list(m.conv_channels)}; give two positive channel counts, e.g. [32, 64]")
    need(m.conv_dense >= 1, "model.conv_dense", f"is {m.conv_dense}; it must be at least 1")
    need(loss.reconstruction in ("bernoulli", "gaussian"), "loss.reconstruction",
         f"is {loss.reconstruction!r}; use 'bernoulli' or 'gaussian'")
    need(loss.link in ("sigmoid", "identity"), "loss.link", f"is {loss.link!r}; use 'sigmoid' or 'identity'")
    need(loss.link == "sigmoid" or loss.reconstruction == "gaussian", "loss.link",
         f"is {loss.link!r}, the mean of a Gaussian decoder; set loss.reconstruction = 'gaussian'")
    need(loss.objective in OBJECTIVES, "loss.objective",
         f"is {loss.objective!r}; use one of: {', '.join(OBJECTIVES)}")
    need(loss.objective == "elbo" or loss.reconstruction == "gaussian", "loss.objective",
         f"is {loss.objective!r}, which sets a Gaussian decoder's variance; set loss.reconstruction = 'gaussian'")
    need(0 < loss.variance < float("inf"), "loss.variance", f"is {loss.variance}; give a positive variance, e.g. 0.5")
    need(0 < loss.balance_rate <= 1, "loss.balance_rate", f"is {loss.balance_rate}; give a weight in (0, 1], e.g. 0.01")
    need(loss.beta >= 0 and loss.beta == loss.beta and loss.beta != float("inf"), "loss.beta",
         f"is {loss.beta}; it must be a finite number >= 0")
    need(t.epochs >= 1, "train.epochs", f"is {t.epochs}; it must be at least 1")
    need(t.batch_size >= 1, "train.batch_size", f"is {t.batch_size}; it must be at least 1")
    need(0 < t.lr < float("inf"), "train.lr", f"is {t.lr}; it must be a positive number")
    need(t.checkpoint_every >= 1, "train.checkpoint_every", f"is {t.checkpoint_every}; it must be at least 1")
    need(t.trace_every >= 0, "train.trace_every", f"is {t.trace_every}; use 0 (automatic) or a positive number")
    need(t.trace_points >= 1, "train.trace_points", f"is {t.trace_points}; it must be at least 1")
    need(t.trace_subset >= 1, "train.trace_subset", f"is {t.trace_subset}; it must be at least 1")
    need(t.threads >= 0, "train.threads", f"is {t.threads}; use 0 (all cores) or a positive number")
    need(t.device in ("auto", "cpu", "cuda") or t.device.startswith("cuda:"), "train.device",
         f"is {t.device!r}; use 'auto', 'cpu' or 'cuda'")
    need(t.compile in COMPILE_MODES, "train.compile", f"is {t.compile!r}; use 'auto', 'on' or 'off'")
    need(s.mu_variance_threshold > 0, "stats.mu_variance_threshold", "must be positive")
    need(0 < s.sigma2_threshold, "stats.sigma2_threshold", "must be positive")
    need(s.kl_threshold > 0, "stats.kl_threshold", "must be positive")
    return config


def resolve(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    **flags: Any,
) -> Config:
    """Resolve a config: preset, then a user TOML file, then ``--set`` overrides, then flags.

    ``flags`` are dotted keys (``train.epochs=20``) whose value ``None`` means "not given".
    """
    tree: dict[str, Any] = {}
    origin = "config"
    if preset is not None:
        tree = _merge(tree, load_preset(preset))
        tree.setdefault("name", preset)
        origin = f"preset {preset}"
    if config_file is not None:
        tree = _merge(tree, load_toml(config_file))
        origin = f"config file {config_file}"
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
        origin = "--set"
    for key, value in flags.items():
        if value is not None:
            _set_dotted(tree, key, value)
    return from_dict(tree, origin)


def replace(config: Config, **dotted: Any) -> Config:
    """Copy of ``config`` with dotted keys replaced, e.g. ``replace(c, **{"train.seed": 1})``."""
    tree = config.to_dict()
    for key, value in dotted.items():
        _set_dotted(tree, key, value)
    return from_dict(tree)


def stats_with(config: Config, **thresholds: float | None) -> StatsConfig:
    """``config.stats`` with the thresholds given (``mu_variance_threshold``, ``sigma2_threshold``,
    ``kl_threshold``; None keeps the config's), validated as any config is."""
    given = {key: value for key, value in thresholds.items() if value is not None}
    return validate(dataclasses.replace(config, stats=dataclasses.replace(config.stats, **given))).stats
