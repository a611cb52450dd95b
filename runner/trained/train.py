"""The recipe of the default model: a small OLMoE-architecture MoE trained on CPU from text in the standard library.

    python -m runner.trained.train [--out DIR] [--steps N] [--threads N]

Seeded and CPU-only; 4-6 minutes on a busy 2-core machine (docs/trained.md). It trains transformers'
OlmoeForCausalLM (hidden 128, 4 layers, 8 experts, top-2, expert width 128, the byte vocabulary of 259:
runner/job/tokenizer.py) on the training split of `pydoc_data.topics` (runner/trained/__init__.py), with AdamW and the
router load-balancing loss, and writes to --out
(default: the shipped runner/trained/olmoe_pydoc_bytes, replaced atomically):
  config.json, model.safetensors (float32), generation_config.json  -> AutoModelForCausalLM.from_pretrained(dir)
  tokenizer.json, tokenizer_config.json                             -> AutoTokenizer.from_pretrained(dir)
  training.json: the settings, versions, the loss curve (train loss, aux loss, lr per step; held-out loss every
                 EVAL_EVERY steps) and the final held-out loss in nats per byte.
docs/trained.md describes the model and how it was made.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

from . import TRAINED_DIR, pydoc_topics

DEFAULT_NAME = "olmoe_pydoc_bytes"
MODEL_YAML = "olmoe_pydoc"  # conf/model/olmoe_pydoc.yaml: the architecture
EVAL_EVERY = 25


@dataclass(frozen=True)
class Settings:
    seed: int = 0
    steps: int = 400
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decay from lr to lr * min_lr_ratio after the warm-up
    warmup_steps: int = 20
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    router_aux_loss_coef: float = 0.01
    threads: int = 1  # one: the same sums on every run of a machine, and no thread waiting on another when it is busy
    model: dict = field(default_factory=lambda: architecture(MODEL_YAML))


def architecture(name: str) -> dict:
    """model_type and config of conf/model/<name>.yaml: the one definition of the architecture, which
    `model.weights=random` builds untrained."""
    from omegaconf import OmegaConf

    from ..config.schema import CONFIG_DIR

    yaml = OmegaConf.load(CONFIG_DIR / "model" / f"{name}.yaml")
    return dict(model_type=yaml.model_type, **OmegaConf.to_container(yaml.config))


def learning_rate(s: Settings, step: int) -> float:
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    progress = (step - s.warmup_steps) / max(s.steps - s.warmup_steps, 1)
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def held_out_loss(model, blocks, batch_size: int) -> float:
    """Mean next-token NLL (nats per byte) over every position of the held-out blocks."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, blocks.shape[0], batch_size):
            ids = blocks[start:start + batch_size]
            logits = model(input_ids=ids, output_router_logits=False).logits[:, :-1].float()
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"))
            count += ids[:, 1:].numel()
    return total / count


def train(s: Settings, out: Path, log=partial(print, flush=True)) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..job.data import tokenize
    from ..results.provenance import versions
    from ..job.tokenizer import byte_tokenizer

    torch.set_num_threads(s.threads)
    torch.manual_seed(s.seed)
    tokenizer = byte_tokenizer()
    stream = tokenize(pydoc_topics("train"), tokenizer, 1, "pydoc_data.topics (train)").ids.flatten()
    held_out = tokenize(pydoc_topics("heldout"), tokenizer, s.seq_len, "pydoc_data.topics (heldout)").ids
    probe = held_out[:: max(held_out.shape[0] // 64, 1)][:64]  # a fixed 64-block sample for the curve

    kwargs = dict(s.model)
    config = AutoConfig.for_model(kwargs.pop("model_type"), **kwargs, output_router_logits=True,
                                  router_aux_loss_coef=s.router_aux_loss_coef)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "norm" not in n)]
    optimizer = torch.optim.AdamW([dict(params=decay, weight_decay=s.weight_decay), dict(params=no_decay, weight_decay=0.0)],
                                  lr=s.lr, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(s.seed)
    offsets = torch.arange(s.seq_len)
    curve: list[dict] = []
    start = time.perf_counter()
    log(f"training {params:,} parameters on {stream.numel():,} bytes, {s.steps} steps of {s.batch_size}x{s.seq_len}")
    for step in range(s.steps):
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(s, step)
        starts = torch.randint(0, stream.numel() - s.seq_len, (s.batch_size,), generator=generator)
        ids = stream[starts[:, None] + offsets]
        output = model(input_ids=ids, labels=ids)
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        optimizer.step()
        aux = float(output.aux_loss.detach())
        point = dict(step=step + 1, loss=round(float(output.loss.detach()) - s.router_aux_loss_coef * aux, 5),
                     aux_loss=round(aux, 5), lr=learning_rate(s, step))
        if (step + 1) % EVAL_EVERY == 0 or step + 1 == s.steps:
            model.eval()
            point["held_out_probe"] = round(held_out_loss(model, probe, s.batch_size), 5)
            log(f"step {step + 1}/{s.steps}: train {point['loss']:.3f}, held-out probe {point['held_out_probe']:.3f}, "
                f"aux {aux:.3f}, {time.perf_counter() - start:.0f}s")
        curve.append(point)
    train_s = time.perf_counter() - start
    model.eval()
    final = held_out_loss(model, held_out, s.batch_size)
    log(f"held-out loss {final:.4f} nats/byte over {held_out.numel():,} bytes ({train_s:.0f}s of training)")

    model.config.output_router_logits = False  # inference: no aux loss
    record = dict(
        recipe="python -m runner.trained.train", settings=asdict(s), parameters=params,
        data=dict(source="pydoc_data.topics (CPython standard library)", train_bytes=int(stream.numel()),
                  held_out_blocks=int(held_out.shape[0]), held_out_tokens=int(held_out.numel()),
                  split="topics in sorted name order; every tenth from the seventh held out (runner/trained/__init__.py)"),
        held_out_loss=round(final, 5), train_seconds=round(train_s, 1),
        machine=dict(**versions(), cpu=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
                     threads=s.threads),
        curve=curve)
    _write(model, tokenizer, record, out)
    return record


def _write(model, tokenizer, record: dict, out: Path) -> None:
    """Everything into a fresh temporary directory beside `out`, then swapped in: a reader never sees half a model."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "training.json").write_text(json.dumps(record, indent=1) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it private
        for path in tmp.iterdir():
            path.chmod(0o644)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.trained.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=TRAINED_DIR / DEFAULT_NAME, help="checkpoint directory to write")
    parser.add_argument("--steps", type=int, default=Settings.steps, help="optimizer steps")
    parser.add_argument("--threads", type=int, default=Settings.threads, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--seed", type=int, default=Settings.seed)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.threads < 1:
        parser.error("--steps and --threads must be at least 1")
    record = train(Settings(steps=args.steps, threads=args.threads, seed=args.seed), args.out)
    print(f"wrote {args.out} (held-out loss {record['held_out_loss']:.4f} nats/byte)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
