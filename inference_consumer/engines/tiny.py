"""``tiny``: the qwen-f2p code path on a tiny, randomly initialised Qwen-Image-Edit, offline.

Every component is the production class in a tiny configuration, seeded, built without any hub
access: a byte-level BPE tokenizer trained here on the pipeline's prompt template (with the Qwen
special tokens; the template's system prefix encodes to 64 tokens, the number the pipeline drops,
as with the real tokenizer), a ``Qwen2VLProcessor`` with small min/max pixels, a 2-layer
``Qwen2_5_VLForConditionalGeneration``, a 2-layer ``QwenImageTransformer2DModel`` and an
``AutoencoderKLQwenImage`` with the real 8x spatial factor (so sizes must be multiples of 16, as
in production). Random LoRAs in the F2P and Lightning slots are made with PEFT.

The pipeline and LoRAs are written once per process to a temporary directory and every engine
loads them with ``qwen.load_pipeline``, i.e. ``from_pretrained`` and ``load_lora_weights``: the
only production code tiny does not run is the download.

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
from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImageTransformer2DModel,
)
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
from .qwen import F2PQwenImageEditPipeline, QwenF2PEngine, load_pipeline, loaded_adapters

if TYPE_CHECKING:
    from .factory import EngineConfig

logger = logging.getLogger(__name__)

TINY_CONDITION_AREA = 128 * 128
TINY_MAX_SIDE = 1024
LORA_WEIGHT_NAME = "f2p_tiny_lora.safetensors"

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
        scheduler=FlowMatchEulerDiscreteScheduler(),
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


@dataclass(frozen=True)
class TinyArtifacts:
    """Where the tiny pipeline and its LoRAs were saved, and how long building took."""

    model_dir: str
    lora_dir: str
    lightning_dir: str
    build_seconds: float


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
    F2PQwenImageEditPipeline.save_lora_weights(
        lightning_dir, transformer_lora_layers=build_lora(seed + 2)
    )
    elapsed = time.perf_counter() - start
    logger.info("built the tiny Qwen-Image-Edit pipeline in %.2f s at %s", elapsed, root)
    return TinyArtifacts(model_dir, lora_dir, lightning_dir, elapsed)


class TinyEngine(QwenF2PEngine):
    """``QwenF2PEngine`` on the tiny random pipeline; its default condition area is 128*128."""

    name = "tiny"

    @classmethod
    def from_config(cls, config: EngineConfig) -> TinyEngine:
        """Load the tiny pipeline with ``config``'s device, batching and LoRA choices.

        ``model_path`` is ignored; a non-empty ``lora_path`` / a set ``lightning_lora_path``
        select the tiny random F2P / Lightning LoRAs. On CPU the dtype is float32.
        """
        artifacts = tiny_artifacts(config.seed)
        load_config = dataclasses.replace(
            config,
            model_path=artifacts.model_dir,
            lora_path=artifacts.lora_dir if config.lora_path else "",
            lora_weight_name=LORA_WEIGHT_NAME,
            lightning_lora_path=artifacts.lightning_dir if config.lightning_lora_path else None,
            dtype="float32" if config.device == "cpu" else config.dtype,
        )
        adapters = loaded_adapters(load_config)
        return cls(
            load_pipeline(load_config),
            model_info=ModelInfo(
                name="tiny-random-qwen-image-edit",
                revision=f"seed-{config.seed}",
                lora="+".join(f"tiny-random-{name}" for name in adapters) or "none",
            ),
            max_batch_size=config.max_batch_size,
            condition_area=config.condition_area or TINY_CONDITION_AREA,
            max_side=TINY_MAX_SIDE,
            warmup_size=64,
            adapters=adapters,
        )
