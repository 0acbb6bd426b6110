"""Optional parts and the extras that install them: the core package needs none of them, and a
config that asks for one that is missing is refused before any work, naming the extra."""

from __future__ import annotations

import importlib.util
import sys

from fedumm.config import ConfigError, RunConfig

# extra -> (the module it installs, what it is)
EXTRAS = {
    "flare": ("nvflare", "NVIDIA FLARE"),
    "flower": ("flwr", "Flower"),
    "datasets": ("datasets", "Hugging Face datasets"),
    "privacy": ("opacus", "Opacus (the privacy accountant and per-sample gradients)"),
    "tensorboard": ("tensorboard", "TensorBoard"),
    "mlflow": ("mlflow", "MLflow"),
    "quantization": ("bitsandbytes", "bitsandbytes (the quantized frozen base)"),
}


def installed(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


def needed(cfg: RunConfig) -> dict[str, str]:
    """extra -> the config key that needs it."""
    out = {}
    if cfg.engine in ("flare", "flower"):
        out[cfg.engine] = f"engine: {cfg.engine}"
    if cfg.data.kind == "hf_dataset" and "vqa" in cfg.data.tasks:
        out["datasets"] = "data.kind: hf_dataset"
    elif cfg.data.classification.source == "hf_dataset" and "classification" in cfg.data.tasks:
        out["datasets"] = "data.classification.source: hf_dataset"
    if cfg.federation.strategy.name == "dp_fedavg":
        out["privacy"] = "federation.strategy.name: dp_fedavg"
    elif cfg.federation.dp_sgd.enabled:
        out["privacy"] = "federation.dp_sgd.enabled: true"
    if cfg.tracking.backend != "none":
        out[cfg.tracking.backend] = f"tracking: {cfg.tracking.backend}"
    if cfg.model.quantization != "none":
        out["quantization"] = f"model.quantization: {cfg.model.quantization}"
    return out


def require(extra: str, why: str) -> None:
    """Refuse `why` unless `extra` is installed."""
    module, what = EXTRAS[extra]
    if not installed(module):
        raise ConfigError(
            f"{why} needs {what}, which is not installed: pip install 'fedumm[{extra}]'"
        )


def check_installed(cfg: RunConfig) -> None:
    """Refuse a config that needs an optional part this environment lacks."""
    for extra, why in needed(cfg).items():
        require(extra, why)
