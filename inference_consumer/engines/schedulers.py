"""The two flow-matching schedules the engine runs: Qwen-Image-Edit's own, and Lightning's.

Both are ``FlowMatchEulerDiscreteScheduler`` configs with dynamic (resolution-dependent)
shifting. The pipeline computes ``mu`` from the output's token count with the scheduler's
``base/max_shift``; Lightning pins ``base_shift = max_shift = log 3`` (a constant shift of 3, the
value it was distilled with) and drops ``shift_terminal``, so its 4-step sigmas are
``[1, .9, .75, .5, 0]`` at every size, where the base schedule gives ``[1, .767, .456, .02, 0]``
at 1024x1024 (issue 9, item 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import calculate_shift

# scheduler/scheduler_config.json of Qwen/Qwen-Image-Edit on the Hugging Face hub
# (huggingface.co/Qwen/Qwen-Image-Edit/blob/main/scheduler/scheduler_config.json; read through
# its mirror ai.gitcode.com/hf_mirrors/Qwen/Qwen-Image-Edit, and identical in the copies
# ostris/ai-toolkit and SimpleTuner ship for Qwen-Image). Nothing here can download it.
QWEN_IMAGE_EDIT_SCHEDULER_CONFIG: Mapping[str, Any] = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "invert_sigmas": False,
    "max_image_seq_len": 8192,
    "max_shift": 0.9,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": 0.02,
    "stochastic_sampling": False,
    "time_shift_type": "exponential",
    "use_beta_sigmas": False,
    "use_dynamic_shifting": True,
    "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}

# The config the Lightning release prescribes: ModelTC/Qwen-Image-Lightning,
# generate_with_diffusers.py (commit 342260e8f5468d2f24d084ce04f55e101007118b, lines 82-97, the
# revision lightx2v/Qwen-Image-Lightning's model card links to; unchanged at 25d1e9935ba9):
# "We use shift=3 in distillation", shift_terminal None, run with --cfg 1.0.
LIGHTNING_SCHEDULER_CONFIG: Mapping[str, Any] = {
    "base_image_seq_len": 256,
    "base_shift": math.log(3),
    "invert_sigmas": False,
    "max_image_seq_len": 8192,
    "max_shift": math.log(3),
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": None,
    "stochastic_sampling": False,
    "time_shift_type": "exponential",
    "use_beta_sigmas": False,
    "use_dynamic_shifting": True,
    "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}


def make_scheduler(config: Mapping[str, Any]) -> FlowMatchEulerDiscreteScheduler:
    """A fresh scheduler from one of the configs above."""
    return FlowMatchEulerDiscreteScheduler.from_config(dict(config))


def pipeline_sigmas(
    scheduler: FlowMatchEulerDiscreteScheduler, steps: int, width: int, height: int
) -> list[float]:
    """The sigmas ``QwenImageEditPipeline`` sets for ``steps`` at ``width`` x ``height``.

    Same computation as the pipeline's step 5 (diffusers 0.39): linear sigmas from 1 to
    ``1/steps``, ``mu`` from the packed latent token count (16x16 pixels per token), then the
    scheduler's own shift; the scheduler appends the terminal 0.
    """
    sigmas = np.linspace(1.0, 1 / steps, steps)
    tokens = (height // 16) * (width // 16)
    config = scheduler.config
    mu = calculate_shift(
        tokens,
        config.get("base_image_seq_len", 256),
        config.get("max_image_seq_len", 4096),
        config.get("base_shift", 0.5),
        config.get("max_shift", 1.15),
    )
    scheduler.set_timesteps(sigmas=sigmas, mu=mu)
    return [float(s) for s in scheduler.sigmas]
