"""``tiny``: the qwen-f2p code path on a tiny, randomly initialised Qwen-Image-Edit, offline.

Every component is the production class in a tiny configuration, seeded, built without any hub
access: a byte-level BPE tokenizer trained here on the pipeline's prompt template (with the Qwen
special tokens; the template's system prefix encodes to 64 tokens, the number the pipeline drops,
as with the real tokenizer), a ``Qwen2VLProcessor`` with small min/max pixels, a 2-layer
``Qwen2_5_VLForConditionalGeneration``, a 2-layer ``QwenImageTransformer2DModel`` and an
``AutoencoderKLQwenImage`` with the real 8x spatial factor (so sizes must be multiples of 16, as
in production), and the real scheduler config of ``Qwen/Qwen-Image-Edit`` (``schedulers.py``),
so its sigmas are the production ones. Random LoRAs fill the F2P slot (PEFT/diffusers key
format) and the Lightning slot (one 8-step and one 4-step file in Lightning's own
``lora_down/lora_up/.alpha`` format with alpha = rank / 8, over every Linear kind of a block).

The pipeline and LoRAs are written once per process to a temporary directory in the layout of
the hub repos, and every engine loads them with ``loading.load_pipeline``: the only production
code tiny does not run is the download.

Costs on 2 CPU cores: building the artefacts well under a second; a 2-step batch at 64x64 or
128x128 takes a fraction of a second (the default 128*128 condition area matters: at diffusers'
1024*1024 one call costs seconds).
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

from .base import ModelInfo
from .loading import load_pipeline
from .pipeline import F2PQwenImageEditPipeline
from .qwen import QwenF2PEngine
from .schedulers import QWEN_IMAGE_EDIT_SCHEDULER_CONFIG, make_scheduler

if TYPE_CHECKING:
    from .config import EngineConfig

logger = logging.getLogger(__name__)

TINY_CONDITION_AREA = 128 * 128
TINY_MAX_SIDE = 1024
LORA_WEIGHT_NAME = "f2p_tiny_lora.safetensors"
LIGHTNING_WEIGHT_NAMES = {
    8: "Qwen-Image-Edit-Lightning-8steps-tiny.safetensors",
    4: "Qwen-Image-Edit-Lightning-4steps-tiny.safetensors",
}
LIGHTNING_RANK = 8
LIGHTNING_ALPHA = 1.0  # alpha/rank = 1/8: a loader that drops alphas applies it 8x too strong
# Every Linear kind of a Qwen-Image block, as the real Lightning files cover them.
LIGHTNING_TARGETS = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
    "attn.add_v_proj", "attn.to_add_out", "img_mod.1", "txt_mod.1", "img_mlp.net.0.proj",
    "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2",
)  # fmt: skip

# Qwen2.5-VL's special tokens, in its order; the pipeline's template uses the chat and vision ones.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# The pipeline's system prompt (QwenImageEditPipeline.prompt_template_encode) and a few prompt
# words: the tokenizer's merges are learnt from them, so the template costs as many tokens as
# with the real tokenizer. Any text still encodes (byte-level), just in more tokens.
_CORPUS = (
    "system\nDescribe the key features of the input image (color, shape, size, texture, "
    "objects, background), then explain how the user's text instruction should alter or modify "
    "the image. Generate a new image that meets the user's requirements while maintaining "
    "consistency with the original input where appropriate.\nuser\nassistant\n",
    "a photo of a person, portrait, full body, studio light, outdoor, wearing a dress, shirt, "
    "jacket, smiling, standing; blurry, low quality, distorted, watermark",
)
TEXT_HIDDEN = 16
TRANSFORMER_CONFIG: dict[str, Any] = {
    "patch_size": 2,
    "in_channels": 16,  # 4 latent channels x 2x2 packing
    "out_channels": 4,
    "num_layers": 2,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": TEXT_HIDDEN,
    "axes_dims_rope": (8, 4, 4),
}
LATENT_CHANNELS = 4
IMAGE_PIXELS = {"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 16}  # 4 to 16 image tokens


def build_tokenizer() -> Qwen2Tokenizer:
    """A byte-level BPE ``Qwen2Tokenizer`` with the Qwen special tokens, trained locally."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS, trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return Qwen2Tokenizer(
        vocab=model["vocab"], merges=merges, extra_special_tokens=list(SPECIAL_TOKENS[1:])
    )


def build_processor(tokenizer: Qwen2Tokenizer) -> Qwen2VLProcessor:
    """``Qwen2VLProcessor`` whose image processor keeps conditions to a few tokens."""
    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**IMAGE_PIXELS),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**IMAGE_PIXELS),
    )


def build_text_encoder(tokenizer: Qwen2Tokenizer) -> Qwen2_5_VLForConditionalGeneration:
    """A 2-layer Qwen2.5-VL whose hidden size matches the transformer's joint attention."""
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": TEXT_HIDDEN,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default"},
            "rope_theta": 1_000_000.0,
            "bos_token_id": None,
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_heads": 2,
            "out_hidden_size": TEXT_HIDDEN,
            "fullatt_block_indexes": [1],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def build_pipeline(seed: int = 0) -> F2PQwenImageEditPipeline:
    """The tiny pipeline with weights drawn from ``seed`` (the global torch RNG is untouched)."""
    tokenizer = build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = build_text_encoder(tokenizer)
        transformer = QwenImageTransformer2DModel(**TRANSFORMER_CONFIG)
        vae = AutoencoderKLQwenImage(
            base_dim=8,  # channels 8-16-32-32: the VAE dominates tiny call times
            z_dim=LATENT_CHANNELS,
            dim_mult=[1, 2, 4, 4],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],  # 3 downsamples: 8x, as in production
            latents_mean=[0.0] * LATENT_CHANNELS,
            latents_std=[1.0] * LATENT_CHANNELS,
        )
    return F2PQwenImageEditPipeline(
        scheduler=make_scheduler(QWEN_IMAGE_EDIT_SCHEDULER_CONFIG),
        vae=vae.eval(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        processor=build_processor(tokenizer),
        transformer=transformer.eval(),
    )


def build_lora(seed: int, rank: int = 4) -> dict[str, torch.Tensor]:
    """A random PEFT LoRA (attention projections) for the tiny transformer, as a state dict."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = QwenImageTransformer2DModel(**TRANSFORMER_CONFIG)
        transformer.add_adapter(
            LoraConfig(
                r=rank,
                lora_alpha=rank,
                target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                init_lora_weights=False,  # random B as well as A: the adapter changes outputs
            )
        )
    return get_peft_model_state_dict(transformer)


def build_lightning_lora(seed: int) -> dict[str, torch.Tensor]:
    """A random LoRA in Lightning's key format (``lora_down/lora_up/.alpha``, no prefix)."""
    generator = torch.Generator().manual_seed(seed)
    transformer_layers = {
        name: module
        for name, module in QwenImageTransformer2DModel(**TRANSFORMER_CONFIG).named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    state: dict[str, torch.Tensor] = {}
    for block in range(TRANSFORMER_CONFIG["num_layers"]):
        for target in LIGHTNING_TARGETS:
            name = f"transformer_blocks.{block}.{target}"
            layer = transformer_layers[name]
            shape_down = (LIGHTNING_RANK, layer.in_features)
            shape_up = (layer.out_features, LIGHTNING_RANK)
            state[f"{name}.lora_down.weight"] = torch.randn(shape_down, generator=generator)
            state[f"{name}.lora_up.weight"] = torch.randn(shape_up, generator=generator)
            state[f"{name}.alpha"] = torch.tensor(LIGHTNING_ALPHA)
    return state


@dataclass(frozen=True)
class TinyArtifacts:
    """Where the tiny pipeline and its LoRAs were saved, and how long building took."""

    model_dir: str
    lora_dir: str
    lightning_dir: str
    build_seconds: float

    def lightning_file(self, steps: int) -> str:
        """The tiny Lightning file distilled (nominally) for ``steps`` steps."""
        return os.path.join(self.lightning_dir, LIGHTNING_WEIGHT_NAMES[steps])


_artifacts: dict[int, TinyArtifacts] = {}
_artifacts_lock = threading.Lock()


def tiny_artifacts(seed: int = 0) -> TinyArtifacts:
    """Build (once per process and seed) and save the tiny pipeline and LoRAs."""
    with _artifacts_lock:
        if seed not in _artifacts:
            _artifacts[seed] = _save_artifacts(seed)
        return _artifacts[seed]


def _save_artifacts(seed: int) -> TinyArtifacts:
    start = time.perf_counter()
    root = tempfile.mkdtemp(prefix=f"f2p-tiny-{seed}-")
    atexit.register(shutil.rmtree, root, True)
    model_dir = os.path.join(root, "model")
    lora_dir = os.path.join(root, "f2p-lora")
    lightning_dir = os.path.join(root, "lightning-lora")
    build_pipeline(seed).save_pretrained(model_dir)
    F2PQwenImageEditPipeline.save_lora_weights(
        lora_dir, transformer_lora_layers=build_lora(seed + 1), weight_name=LORA_WEIGHT_NAME
    )
    from safetensors.torch import save_file

    os.makedirs(lightning_dir)
    for offset, name in enumerate(LIGHTNING_WEIGHT_NAMES.values()):
        save_file(build_lightning_lora(seed + 2 + offset), os.path.join(lightning_dir, name))
    elapsed = time.perf_counter() - start
    logger.info("built the tiny Qwen-Image-Edit pipeline in %.2f s at %s", elapsed, root)
    return TinyArtifacts(model_dir, lora_dir, lightning_dir, elapsed)


class TinyEngine(QwenF2PEngine):
    """``QwenF2PEngine`` on the tiny random pipeline; its default condition area is 128*128."""

    name = "tiny"

    @classmethod
    def from_config(cls, config: EngineConfig) -> TinyEngine:
        """Load the tiny pipeline with ``config``'s device, batching, LoRA and speed choices.

        ``model_path`` is ignored; a non-empty ``lora_path`` / a set ``lightning_lora_path``
        select the tiny random F2P / Lightning LoRAs (the 4-step file if ``lightning_steps`` is
        4 or the path names "4steps", else the 8-step one). On CPU the dtype is float32.
        """
        artifacts = tiny_artifacts(config.seed)
        lightning = steps = None
        if config.lightning_lora_path:
            named = lora_steps_hint(config.lightning_lora_path)
            steps = config.lightning_steps or named or 8
            lightning = artifacts.lightning_file(steps)
        load_config = dataclasses.replace(
            config,
            model_path=artifacts.model_dir,
            lora_path=os.path.join(artifacts.lora_dir, LORA_WEIGHT_NAME)
            if config.lora_path
            else "",
            lora_weight_name=None,
            lightning_lora_path=lightning,
            lightning_weight_name=None,
            lightning_steps=steps,
            dtype="float32" if config.device == "cpu" else config.dtype,
        )
        loaded = load_pipeline(load_config)
        return cls(
            loaded.pipe,
            model_info=ModelInfo(
                name="tiny-random-qwen-image-edit",
                revision=f"seed-{config.seed}",
                lora="+".join(f"tiny-random-{name}" for name in loaded.adapters) or None,
            ),
            max_batch_size=config.max_batch_size,
            condition_area=config.condition_area or TINY_CONDITION_AREA,
            max_side=TINY_MAX_SIDE,
            warmup_sizes=config.warmup_sizes or ((64, 64),),
            adapters=loaded.adapters,
            presets=loaded.presets,
            lightning_scheduler=loaded.lightning_scheduler,
            cache_hooks=loaded.cache_hooks,
            attention_backend=config.attention_backend,
            compiled=loaded.compiled,
        )


def lora_steps_hint(path: str) -> int | None:
    """4 or 8 when ``path`` names a step count ("…-4steps…"), else ``None``."""
    from .lora import lightning_steps_from_name

    return lightning_steps_from_name(path)
