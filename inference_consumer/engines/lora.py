"""LoRA adapters that cannot load silently wrong (issue 9, items 2 and 3).

diffusers' Qwen loader drops keys it cannot place with a warning (bare ``lora_A`` names, layers
the model lacks), discards ``.alpha`` in ``lora_A/lora_B`` files (a Lightning file of that shape
would be applied 8x too strong) and mis-scales files whose ranks differ between layers. So this
module does the mapping itself and lets diffusers/PEFT only inject the layers:

1. ``resolve_weight_file``: one explicit ``.safetensors`` file — local, or a hub file (from the
   local hub cache when present, so an offline worker starts) — never "whichever is listed
   first".
2. ``parse_lora``: every key of the file is mapped to a ``Linear`` of the transformer, whatever
   the format — DiffSynth (``…lora_A.default.weight``), PEFT/diffusers (``transformer.`` prefix),
   ComfyUI (``diffusion_model.`` prefix), kohya (``lora_unet_transformer_blocks_0_attn_to_q``),
   Lightning / ComfyUI ``lora_down/lora_up/.alpha`` — or the load fails naming the keys.
3. ``load_adapter``: the pairs go to ``load_lora_adapter`` with an explicit PEFT config whose
   ``rank_pattern``/``alpha_pattern`` carry every layer's own rank and alpha (scale alpha/rank).
4. ``verify_adapter``: after loading, every layer of the file holds exactly the file's tensors at
   the intended scale, and no other layer holds the adapter; otherwise ``EngineLoadError``.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from .config import KNOWN_WEIGHT_NAMES
from .exceptions import EngineLoadError

logger = logging.getLogger(__name__)

# (suffix, role); longest first so ".lora_A.default.weight" wins over ".weight" forms.
_SUFFIXES = (
    (".lora_A.default.weight", "down"),
    (".lora_B.default.weight", "up"),
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
    (".lora.down.weight", "down"),
    (".lora.up.weight", "up"),
    (".alpha", "alpha"),
)
# Wrappers around the transformer's own module names, as the known exporters write them.
_PREFIXES = (
    "base_model.model.",
    "model.diffusion_model.",
    "diffusion_model.",
    "transformer.",
    "lora_unet_",
)
_STEPS_IN_NAME = re.compile(r"(\d+)[-_ ]?steps?", re.IGNORECASE)
MAX_NAMED_KEYS = 12


@dataclass(frozen=True)
class LoraPair:
    """One layer's low-rank update: ``scale * up @ down`` with ``scale = alpha / rank``."""

    module: str
    down: torch.Tensor  # (rank, in_features)
    up: torch.Tensor  # (out_features, rank)
    alpha: float
    keys: tuple[str, ...]

    @property
    def rank(self) -> int:
        """The rank of the update (rows of ``down``)."""
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        """The factor PEFT applies at adapter weight 1.0."""
        return self.alpha / self.rank


def _named(keys: Sequence[str]) -> str:
    shown = ", ".join(k[:200] for k in list(keys)[:MAX_NAMED_KEYS])
    more = len(keys) - MAX_NAMED_KEYS
    return shown + (f" and {more} more" if more > 0 else "")


# -- 1. which file --------------------------------------------------------------------------------


def _looks_local(path: str) -> bool:
    return os.path.isabs(path) or path.startswith(("./", "../", "~")) or os.path.exists(path)


def _check_relative(name: str, what: str) -> None:
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or ".." in parts or not all(parts):
        raise EngineLoadError(f"{what} {name[:200]!r} must be a relative path inside the repo")


def resolve_weight_file(path: str, weight_name: str | None, *, adapter: str) -> str:
    """The local path of the one ``.safetensors`` file ``path`` (+ ``weight_name``) names.

    ``path`` is a local file, a local directory plus ``weight_name``, or a hub repo
    ``owner/name`` with either a path inside it (``owner/name/sub/file.safetensors``) or a
    ``weight_name`` (which may contain a sub-folder). A directory or repo without a file name is
    refused (listing the candidates for a directory) unless the repo has a known file name.
    """
    what = f"LoRA {adapter!r}"
    expanded = os.path.expanduser(path)
    if weight_name is not None:
        _check_relative(weight_name, f"{what}: weight name")
    if os.path.isfile(expanded):
        if weight_name is not None:
            raise EngineLoadError(f"{what}: {path!r} is a file; do not give a weight name too")
        return expanded
    if os.path.isdir(expanded):
        if weight_name is None:
            candidates = sorted(
                os.path.relpath(os.path.join(root, name), expanded)
                for root, _, names in os.walk(expanded)
                for name in names
                if name.endswith(".safetensors")
            )
            raise EngineLoadError(
                f"{what}: {path!r} is a directory; name the weight file "
                f"(candidates: {_named(candidates) or 'none'})"
            )
        file = os.path.join(expanded, weight_name)
        if not os.path.isfile(file):
            raise EngineLoadError(f"{what}: {weight_name!r} does not exist in {path!r}")
        return file
    if _looks_local(expanded):
        raise EngineLoadError(f"{what}: {path!r} does not exist")
    return _hub_file(path, weight_name, what)


def _hub_file(path: str, weight_name: str | None, what: str) -> str:
    parts = path.strip("/").split("/")
    if len(parts) < 2 or not all(parts):
        raise EngineLoadError(f"{what}: {path[:200]!r} is neither a local path nor a hub repo id")
    repo, inner = "/".join(parts[:2]), "/".join(parts[2:])
    if inner.endswith(".safetensors") and weight_name is not None:
        raise EngineLoadError(f"{what}: {path!r} already names a file; drop the weight name")
    if not inner and weight_name is None:
        weight_name = KNOWN_WEIGHT_NAMES.get(repo)
        if weight_name is None:
            raise EngineLoadError(
                f"{what}: name the weight file inside hub repo {repo!r} (a weight name, or "
                f"{repo}/<file>.safetensors)"
            )
    filename = "/".join(part for part in (inner, weight_name) if part)
    if not filename.endswith(".safetensors"):
        raise EngineLoadError(f"{what}: {filename!r} is not a .safetensors file")
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(repo, filename)
        if isinstance(cached, str):
            return cached
        return hf_hub_download(repo, filename)
    except Exception as exc:  # offline, missing file, bad id: one clear load error
        raise EngineLoadError(
            f"{what}: cannot get {filename!r} from hub repo {repo!r}: {exc}"
        ) from exc


def lightning_steps_from_name(file: str) -> int | None:
    """8 for ``Qwen-Image-Edit-Lightning-8steps-V1.0.safetensors``; ``None`` if not named."""
    match = _STEPS_IN_NAME.search(os.path.basename(file))
    return int(match.group(1)) if match else None


def read_lora_file(file: str, *, adapter: str) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file (on CPU); ``EngineLoadError`` if it is not one."""
    from safetensors.torch import load_file

    try:
        return load_file(file)
    except Exception as exc:
        raise EngineLoadError(
            f"LoRA {adapter!r}: {file!r} is not a readable safetensors file: {exc}"
        ) from exc


# -- 2. which layers ------------------------------------------------------------------------------


def linear_layers(transformer: nn.Module) -> dict[str, nn.Linear]:
    """The transformer's ``Linear`` layers a LoRA can target, by name (PEFT-wrapped or not)."""
    layers: dict[str, nn.Linear] = {}
    for name, module in transformer.named_modules():
        base = getattr(module, "base_layer", None)
        if isinstance(base, nn.Linear):
            layers[name] = base  # already wrapped by an earlier adapter
        elif (
            isinstance(module, nn.Linear)
            and ".lora_" not in name
            and not name.endswith(".base_layer")
        ):
            layers[name] = module
    return layers


def parse_lora(
    state_dict: Mapping[str, torch.Tensor], layers: Mapping[str, nn.Linear], *, adapter: str
) -> list[LoraPair]:
    """Map every key of ``state_dict`` to a layer of ``layers``; ``EngineLoadError`` otherwise.

    The error names the keys that would have been lost: unknown suffixes, layers the model lacks,
    a down without its up (or an alpha without either), shapes that do not fit the layer,
    ambiguous or duplicate names, and alphas that are not positive finite scalars.
    """
    flat = {name.replace(".", "_"): name for name in layers}
    counts = collections.Counter(name.replace(".", "_") for name in layers)
    ambiguous = {flat_name for flat_name, count in counts.items() if count > 1}
    found: dict[str, dict[str, tuple[str, torch.Tensor]]] = collections.defaultdict(dict)
    problems: dict[str, list[str]] = collections.defaultdict(list)
    for key, tensor in state_dict.items():
        stem, role = _split_key(key)
        if role is None:
            problems["not a LoRA down/up/alpha tensor"].append(key)
            continue
        module = _module_name(stem, layers, flat, ambiguous)
        if module is None:
            problems["no such Linear layer in the transformer (or an ambiguous name)"].append(key)
            continue
        if role in found[module]:
            problems["more than one tensor for the same layer"].append(key)
            continue
        found[module][role] = (key, tensor)
    pairs = []
    for module, roles in found.items():
        pair = _pair(module, roles, layers[module], problems)
        if pair is not None:
            pairs.append(pair)
    if not state_dict:
        problems["the file holds no tensors"].append("(empty)")
    if problems:
        detail = "; ".join(f"{reason}: {_named(keys)}" for reason, keys in problems.items())
        raise EngineLoadError(f"LoRA {adapter!r}: {detail}")
    return sorted(pairs, key=lambda p: p.module)


def _split_key(key: str) -> tuple[str, str | None]:
    for suffix, role in _SUFFIXES:
        if key.endswith(suffix):
            stem = key[: -len(suffix)]
            for prefix in _PREFIXES:
                stem = stem.removeprefix(prefix)
            return stem, role
    return key, None


def _module_name(
    stem: str, layers: Mapping[str, nn.Linear], flat: Mapping[str, str], ambiguous: set[str]
) -> str | None:
    if stem in layers:
        return stem
    if stem in ambiguous:
        return None
    return flat.get(stem)  # kohya: dots flattened to underscores


def _pair(
    module: str,
    roles: Mapping[str, tuple[str, torch.Tensor]],
    layer: nn.Linear,
    problems: dict[str, list[str]],
) -> LoraPair | None:
    keys = tuple(key for key, _ in roles.values())
    if "down" not in roles or "up" not in roles:
        problems["a LoRA half without its other half"].extend(keys)
        return None
    down, up = roles["down"][1], roles["up"][1]
    if (
        down.ndim != 2
        or up.ndim != 2
        or up.shape[1] != down.shape[0]
        or down.shape[1] != layer.in_features
        or up.shape[0] != layer.out_features
    ):
        problems[
            f"shapes {tuple(down.shape)}/{tuple(up.shape)} do not fit {module} "
            f"({layer.in_features} -> {layer.out_features})"
        ].extend(keys)
        return None
    alpha = float(down.shape[0])
    if "alpha" in roles:
        raw = roles["alpha"][1]
        alpha = float(raw.float().reshape(-1)[0]) if raw.numel() == 1 else math.nan
        if not math.isfinite(alpha) or alpha <= 0:
            problems["alpha is not a positive finite scalar"].append(roles["alpha"][0])
            return None
    return LoraPair(module, down, up, alpha, keys)


# -- 3. load --------------------------------------------------------------------------------------


def peft_metadata(pairs: Sequence[LoraPair]) -> dict[str, Any]:
    """A ``LoraConfig`` that gives every layer its own rank and alpha (anchored patterns)."""
    common = collections.Counter((p.rank, p.alpha) for p in pairs).most_common(1)[0][0]
    rank, alpha = common
    return {
        "r": rank,
        "lora_alpha": alpha,
        "rank_pattern": {f"^{re.escape(p.module)}": p.rank for p in pairs if p.rank != rank},
        "alpha_pattern": {f"^{re.escape(p.module)}": p.alpha for p in pairs if p.alpha != alpha},
        "target_modules": sorted(p.module for p in pairs),
        "use_dora": False,
        "lora_bias": False,
    }


def load_adapter(pipe: Any, pairs: Sequence[LoraPair], adapter: str) -> None:
    """Inject ``pairs`` into the pipeline's transformer as adapter ``adapter``."""
    state = {}
    for pair in pairs:
        state[f"{pair.module}.lora_A.weight"] = pair.down
        state[f"{pair.module}.lora_B.weight"] = pair.up
    try:
        with warnings.catch_warnings():
            # PEFT warns on every adapter after the first; several adapters are intended here.
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            pipe.transformer.load_lora_adapter(
                state, prefix=None, adapter_name=adapter, metadata=peft_metadata(pairs),
                _pipeline=pipe,
            )  # fmt: skip
    except Exception as exc:
        raise EngineLoadError(
            f"LoRA {adapter!r}: injecting {len(pairs)} layers failed: {exc}"
        ) from exc


# -- 4. verify ------------------------------------------------------------------------------------


def verify_adapter(
    transformer: nn.Module, pairs: Sequence[LoraPair], adapter: str, *, weight: float = 1.0
) -> None:
    """Every pair landed on its layer with the file's tensors at ``scale * weight``; nothing else.

    Raises ``EngineLoadError`` naming the file keys that did not land as intended.
    """
    problems: dict[str, list[str]] = collections.defaultdict(list)
    expected = {pair.module for pair in pairs}
    for pair in pairs:
        layer = transformer.get_submodule(pair.module)
        lora_a, lora_b = getattr(layer, "lora_A", None), getattr(layer, "lora_B", None)
        if lora_a is None or lora_b is None or adapter not in lora_a:
            problems["not applied to its layer"].extend(pair.keys)
            continue
        a, b = lora_a[adapter].weight, lora_b[adapter].weight
        if not _same(a, pair.down) or not _same(b, pair.up):
            problems["tensors differ from the file"].extend(pair.keys)
        intended = pair.scale * weight
        scale = float(cast("dict[str, float]", layer.scaling)[adapter])  # peft's per-adapter dict
        if not math.isclose(scale, intended, rel_tol=1e-6, abs_tol=1e-12):
            problems[f"applied at scale {scale:g}, not alpha/rank x weight = {intended:g}"].extend(
                pair.keys
            )
    stray = [
        name
        for name, module in transformer.named_modules()
        if isinstance(getattr(module, "lora_A", None), nn.ModuleDict)
        and adapter in module.lora_A
        and name not in expected
    ]
    if stray:
        problems["layers hold the adapter although the file has no keys for them"].extend(stray)
    if problems:
        detail = "; ".join(f"{reason}: {_named(keys)}" for reason, keys in problems.items())
        raise EngineLoadError(f"LoRA {adapter!r} did not load as written: {detail}")


def _same(loaded: torch.Tensor, source: torch.Tensor) -> bool:
    expected = source.to(device=loaded.device, dtype=loaded.dtype)
    return loaded.shape == expected.shape and bool(torch.equal(loaded.detach(), expected))


def summary(pairs: Sequence[LoraPair]) -> str:
    """``"840 layers, rank 64, alpha/rank 1"`` for the load log line."""
    ranks = sorted({p.rank for p in pairs})
    scales = sorted({round(p.scale, 6) for p in pairs})
    return (
        f"{len(pairs)} layers, rank {'/'.join(map(str, ranks))}, "
        f"alpha/rank {'/'.join(f'{s:g}' for s in scales)}"
    )
