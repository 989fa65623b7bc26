#!/usr/bin/env python3
"""PyTorch training baselines for the CUDA trainer's targets (issue 7's peer table).

    python3 bench/train_pytorch.py --shape qwen2.5-1.5b --setup bf16-adamw --batch 8 --seq 1024

Random init, random tokens, one optimizer step per micro-batch. Setups:
  bf16-adamw     bf16 weights, fused AdamW, bf16 autocast, SDPA attention
  fp32-adamw     fp32 master weights, fused AdamW, bf16 autocast
  lora16         LoRA r16 (peft) on every linear layer of a bf16 base
  bf16-ckpt      bf16-adamw with activation checkpointing
  fp32-compile   fp32-adamw with torch.compile
Prints tok/s (timed steps after warm-up), peak allocated GiB and the model FLOP utilization
(6 N tokens / time / 989 TFLOP/s bf16 dense on H100 SXM; attention FLOPs not counted).

Run on the GPU machine on 2026-11-23 (bench/RESULTS.md "Peers re-measured"): qwen2.5-1.5b bf16-adamw
35,073 tok/s / 44.8 GiB, seed-500m fp32-compile 52,504 tok/s / 10.75 GiB; the other setups are the
issue's figures.
"""
import argparse
import json
import sys
import time

SHAPES = {
    # Qwen2.5-1.5B: tied embeddings, q/k/v biases (transformers' Qwen2Config).
    "qwen2.5-1.5b": dict(kind="qwen2", hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, intermediate_size=8960, vocab_size=151936,
                         tie_word_embeddings=True, rope_theta=1e6),
    # The seeds' 500M config: dim 1280, 24 layers, 20 heads, GPT-2 vocabulary. The seeds do not state
    # the FFN width; a Llama-style SwiGLU of 8/3 x dim rounded up to 128 is used.
    "seed-500m": dict(kind="llama", hidden_size=1280, num_hidden_layers=24, num_attention_heads=20,
                      num_key_value_heads=20, intermediate_size=3456, vocab_size=50257,
                      tie_word_embeddings=False, rope_theta=1e4),
}
SETUPS = ["bf16-adamw", "fp32-adamw", "lora16", "bf16-ckpt", "fp32-compile"]
PEAK_BF16_FLOPS = 989e12


def build(shape, setup, seq):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    s = dict(SHAPES[shape])
    kind = s.pop("kind")
    cfg_cls, model_cls = (Qwen2Config, Qwen2ForCausalLM) if kind == "qwen2" else (LlamaConfig, LlamaForCausalLM)
    cfg = cfg_cls(**s, max_position_embeddings=max(seq, 2048), attn_implementation="sdpa", use_cache=False)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = model_cls(cfg)
    if setup in ("bf16-adamw", "bf16-ckpt", "lora16"):
        model = model.to(torch.bfloat16)
    if setup == "bf16-ckpt":
        model.gradient_checkpointing_enable()
    if setup == "lora16":
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            sys.exit("train_pytorch.py: --setup lora16 needs the peft package (pip install peft)")
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=targets, lora_dropout=0.0))
    params = sum(p.numel() for p in model.parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4, fused=True)
    step_model = torch.compile(model) if setup == "fp32-compile" else model
    return model, step_model, opt, params


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-1.5b")
    ap.add_argument("--setup", choices=SETUPS, default="bf16-adamw")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, allocator)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of text")
    a = ap.parse_args()
    if a.batch <= 0 or a.seq <= 0 or a.steps <= 0 or a.warmup < 0:
        ap.error("--batch, --seq and --steps must be positive, --warmup not negative")

    import torch
    if not torch.cuda.is_available():
        sys.exit("train_pytorch.py: no CUDA device")
    model, step_model, opt, params = build(a.shape, a.setup, a.seq)
    vocab = SHAPES[a.shape]["vocab_size"]
    gen = torch.Generator(device="cuda").manual_seed(1)

    def step():
        ids = torch.randint(0, vocab, (a.batch, a.seq), device="cuda", generator=gen)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step_model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(a.warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    tokens = a.batch * a.seq * a.steps
    r = dict(shape=a.shape, setup=a.setup, batch=a.batch, seq=a.seq, params=params, steps=a.steps,
             tok_s=tokens / dt, peak_gib=torch.cuda.max_memory_allocated() / 2**30,
             mfu=6 * params * tokens / dt / PEAK_BF16_FLOPS, loss=float(loss),
             torch=torch.__version__, gpu=torch.cuda.get_device_name())
    if a.json:
        print(json.dumps(r))
    else:
        print(f"{r['shape']} {r['setup']} B{a.batch}xT{a.seq}: {r['tok_s']:,.0f} tok/s, peak {r['peak_gib']:.1f} GiB, "
              f"MFU {100 * r['mfu']:.1f}% ({params / 1e6:.0f}M parameters, {r['gpu']}, torch {r['torch']})")


if __name__ == "__main__":
    main()
