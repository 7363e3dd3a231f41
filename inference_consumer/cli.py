"""``f2p worker`` and ``f2p demo``."""

from __future__ import annotations

import logging
import signal

import click

from connectors.settings import load_settings
from inference_consumer.config import WorkerConfig
from inference_consumer.engines.config import (
    CACHE_NAMES,
    PRESET_NAMES,
    QUANTIZATION_NAMES,
    EngineConfig,
    parse_sizes,
)
from inference_consumer.engines.factory import create_engine

log = logging.getLogger(__name__)


@click.command("worker")
@click.option("--worker-id", help="Stable id: static group member and transactional.id.")
@click.option(
    "--engine",
    "engine_name",
    type=click.Choice(["sim", "tiny", "qwen-f2p"]),
    default=None,
    help="Engine (default $F2P_ENGINE or sim).",
)
@click.option("--group", "group_id", help="Consumer group (default f2p-workers).")
@click.option("--max-batch", type=click.IntRange(1, 64), help="Max requests per engine call.")
@click.option("--max-batch-wait-ms", type=click.IntRange(0, 10_000))
@click.option("--max-in-flight", type=click.IntRange(1, 100_000))
@click.option("--metrics-port", type=click.IntRange(0, 65535), help="0: no HTTP endpoint.")
@click.option("--sim-time-scale", type=click.FloatRange(0, 1000), help="sim engine speed factor.")
@click.option(
    "--condition-area",
    type=click.IntRange(64 * 64, 4096 * 4096),
    help="Pixels of the condition image (tiny default 128*128).",
)
@click.option("--device", help="torch device for tiny/qwen-f2p, e.g. cuda:0.")
@click.option("--model-path", help="qwen-f2p base model: hub id or local directory.")
@click.option("--lora-path", help="qwen-f2p F2P LoRA: hub id or local file/directory.")
@click.option("--lora-weight-name", help="F2P LoRA file inside --lora-path (may hold a folder).")
@click.option("--lightning-lora-path", help="Lightning LoRA: hub id or local file/directory.")
@click.option("--lightning-weight-name", help="Lightning LoRA file inside its path.")
@click.option("--lightning-steps", type=click.Choice(["4", "8"]), help="Its distilled steps.")
@click.option("--preset", type=click.Choice(PRESET_NAMES, case_sensitive=False))
@click.option(
    "--attention-backend", metavar="NAME", help="diffusers backend: native (SDPA, default), flash…"
)
@click.option("--cache", type=click.Choice(CACHE_NAMES), help="Cache hook of the fastest preset.")
@click.option("--quantization", type=click.Choice(QUANTIZATION_NAMES), help="Default none.")
@click.option("--compile/--no-compile", "compile_", default=None, help="Regional torch.compile.")
@click.option("--warmup-sizes", help="Sizes to warm up, e.g. 1024x1024,768x1344.")
@click.option("--shutdown-timeout-s", type=click.FloatRange(0, 3600))
def worker_cmd(engine_name: str | None, **options: object) -> None:
    """Run one inference worker (one per GPU) until SIGTERM/SIGINT.

    Every engine flag has an F2P_ENGINE_* variable (inference_consumer/engines/config.py).
    """
    from inference_consumer.worker import Worker

    steps, sizes = options.pop("lightning_steps"), options.pop("warmup_sizes")
    engine_overrides = {
        "name": engine_name,
        "max_batch_size": options.pop("max_batch"),
        "sim_time_scale": options.pop("sim_time_scale"),
        "condition_area": options.pop("condition_area"),
        "device": options.pop("device"),
        "model_path": options.pop("model_path"),
        "lora_path": options.pop("lora_path"),
        "lora_weight_name": options.pop("lora_weight_name"),
        "lightning_lora_path": options.pop("lightning_lora_path"),
        "lightning_weight_name": options.pop("lightning_weight_name"),
        "lightning_steps": int(str(steps)) if steps else None,
        "preset": options.pop("preset"),
        "attention_backend": options.pop("attention_backend"),
        "cache": options.pop("cache"),
        "quantization": options.pop("quantization"),
        "compile": options.pop("compile_"),
        "warmup_sizes": _sizes(str(sizes)) if sizes else None,
    }
    engine_config = EngineConfig.from_env(
        **{k: v for k, v in engine_overrides.items() if v is not None}
    )
    config = WorkerConfig.from_env(**options)
    settings = load_settings()
    engine = create_engine(engine_config)
    engine.warmup()
    worker = Worker(settings, config, engine)

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %s: shutting down", signal.Signals(signum).name)
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        worker.run()
    finally:
        engine.close()


def _sizes(raw: str) -> tuple[tuple[int, int], ...]:
    try:
        return parse_sizes(raw)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--warmup-sizes") from None


@click.command("demo")
@click.option("--workers", type=click.IntRange(1, 8), default=2, show_default=True)
@click.option("--requests", "count", type=click.IntRange(1, 10_000), default=24, show_default=True)
@click.option(
    "--engine", "engine_name", type=click.Choice(["tiny", "sim"]), default="tiny", show_default=True
)
@click.option(
    "--size",
    type=click.IntRange(64, 1024),
    default=128,
    show_default=True,
    help="Output width and height.",
)
@click.option("--steps", type=click.IntRange(1, 50), default=4, show_default=True)
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False),
    default="demo-output",
    show_default=True,
    help="Local copies of the generated images.",
)
@click.option("--timeout-s", type=click.FloatRange(10, 3600), default=600, show_default=True)
def demo_cmd(**options: object) -> None:
    """The main job: stack up, topics, workers, publish, wait for every result, summary."""
    from inference_consumer.demo import DemoOptions, run_demo

    run_demo(DemoOptions(**options))  # type: ignore[arg-type]
