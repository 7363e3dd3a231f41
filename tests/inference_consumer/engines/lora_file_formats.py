"""LoRA files in the key formats found in the wild, and a hub cache laid out like the real repos.

Helpers for ``test_engines_lora_formats.py``. Every format writes the same low-rank update
(``up @ down`` per layer, scaled by ``alpha / rank``) under its own key names:

=================  ===================================================  ======================
format             keys of layer ``m``                                  alpha
=================  ===================================================  ======================
``diffsynth``      ``m.lora_A.default.weight``, ``m.lora_B.default…``   none (= rank)
``diffusers``      ``transformer.m.lora_A.weight``, ``…lora_B.weight``  none (= rank)
``bare``           ``m.lora_A.weight``, ``m.lora_B.weight``             none (= rank)
``comfyui``        ``diffusion_model.m.lora_down.weight``, ``lora_up``  ``diffusion_model.m.alpha``
``comfyui_ab``     ``diffusion_model.m.lora_A.weight``, ``lora_B``      ``diffusion_model.m.alpha``
``kohya``          ``lora_unet_<m with _ for .>.lora_down.weight``      ``lora_unet_<m>.alpha``
``lightning``      ``m.lora_down.weight``, ``m.lora_up.weight``         ``m.alpha``
=================  ===================================================  ======================
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

import torch
from safetensors.torch import save_file

FORMATS = ("diffsynth", "diffusers", "bare", "comfyui", "comfyui_ab", "kohya", "lightning")
WITH_ALPHA = {"comfyui", "comfyui_ab", "kohya", "lightning"}
# Every Linear kind of a block, so kohya's flattened names meet img_mlp, to_add_out, add_q_proj…
TARGETS = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
    "attn.add_v_proj", "attn.to_add_out", "img_mod.1", "txt_mod.1", "img_mlp.net.0.proj",
    "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2",
)  # fmt: skip


@dataclass(frozen=True)
class Layer:
    """One layer's update as written to a file."""

    module: str
    down: torch.Tensor
    up: torch.Tensor
    alpha: float | None  # None: the format carries no alpha (scale 1)

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.down.shape[0]


def random_layers(
    transformer: torch.nn.Module,
    *,
    seed: int,
    rank: int = 4,
    alpha: float | None = None,
    blocks: int = 2,
    odd_rank_every: int = 0,
) -> list[Layer]:
    """Random updates for ``TARGETS`` of the first ``blocks`` blocks of ``transformer``.

    ``odd_rank_every`` > 0 gives every n-th layer rank ``2 * rank`` (files whose ranks differ
    between layers are mis-scaled by diffusers' own loader).
    """
    generator = torch.Generator().manual_seed(seed)
    modules = dict(transformer.named_modules())
    layers = []
    for index, (block, target) in enumerate((b, t) for b in range(blocks) for t in TARGETS):
        name = f"transformer_blocks.{block}.{target}"
        linear = modules[name]
        r = 2 * rank if odd_rank_every and index % odd_rank_every == 0 else rank
        down = torch.randn((r, linear.in_features), generator=generator) * 0.5
        up = torch.randn((linear.out_features, r), generator=generator) * 0.5
        layer_alpha = None if alpha is None else alpha * r / rank
        layers.append(Layer(name, down, up, layer_alpha))
    return layers


def key_names(fmt: str, module: str) -> tuple[str, str, str | None]:
    """(down key, up key, alpha key or None) of ``module`` in format ``fmt``."""
    flat = "lora_unet_" + module.replace(".", "_")
    return {
        "diffsynth": (f"{module}.lora_A.default.weight", f"{module}.lora_B.default.weight", None),
        "diffusers": (
            f"transformer.{module}.lora_A.weight", f"transformer.{module}.lora_B.weight", None
        ),
        "bare": (f"{module}.lora_A.weight", f"{module}.lora_B.weight", None),
        "comfyui": (
            f"diffusion_model.{module}.lora_down.weight",
            f"diffusion_model.{module}.lora_up.weight",
            f"diffusion_model.{module}.alpha",
        ),
        "comfyui_ab": (
            f"diffusion_model.{module}.lora_A.weight",
            f"diffusion_model.{module}.lora_B.weight",
            f"diffusion_model.{module}.alpha",
        ),
        "kohya": (f"{flat}.lora_down.weight", f"{flat}.lora_up.weight", f"{flat}.alpha"),
        "lightning": (f"{module}.lora_down.weight", f"{module}.lora_up.weight", f"{module}.alpha"),
    }[fmt]  # fmt: skip


def state_dict(fmt: str, layers: list[Layer]) -> dict[str, torch.Tensor]:
    """The tensors of a file of format ``fmt`` holding ``layers``."""
    tensors: dict[str, torch.Tensor] = {}
    for layer in layers:
        down_key, up_key, alpha_key = key_names(fmt, layer.module)
        tensors[down_key] = layer.down.contiguous()
        tensors[up_key] = layer.up.contiguous()
        if alpha_key is not None:
            if layer.alpha is None:
                raise ValueError(f"format {fmt} needs an alpha")
            tensors[alpha_key] = torch.tensor(float(layer.alpha))
        elif layer.alpha is not None and layer.alpha != layer.down.shape[0]:
            raise ValueError(f"format {fmt} cannot carry alpha {layer.alpha}")
    return tensors


def write(path: str, tensors: dict[str, torch.Tensor]) -> str:
    """Save ``tensors`` as a safetensors file at ``path`` (directories created)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(tensors, path)
    return path


def hub_snapshot(cache: str, repo: str, revision: str = "0" * 40) -> str:
    """Create ``models--owner--name`` in the hub cache ``cache``; its snapshot directory."""
    root = os.path.join(cache, "models--" + repo.replace("/", "--"))
    os.makedirs(os.path.join(root, "refs"), exist_ok=True)
    with open(os.path.join(root, "refs", "main"), "w") as ref:
        ref.write(revision)
    snapshot = os.path.join(root, "snapshots", revision)
    os.makedirs(snapshot, exist_ok=True)
    return snapshot


def copy_model(model_dir: str, snapshot: str) -> None:
    """Copy a saved pipeline (model_index.json + component folders) into a snapshot."""
    shutil.copytree(model_dir, snapshot, dirs_exist_ok=True)


def merged_weights(
    base: dict[str, torch.Tensor], adapters: list[tuple[list[Layer], float]]
) -> dict[str, torch.Tensor]:
    """Hand-merged reference: ``W + sum(weight * alpha/rank * up @ down)`` per layer."""
    merged = {name: tensor.clone() for name, tensor in base.items()}
    for layers, weight in adapters:
        for layer in layers:
            key = f"{layer.module}.weight"
            merged[key] = merged[key] + weight * layer.scale * (layer.up @ layer.down)
    return merged
