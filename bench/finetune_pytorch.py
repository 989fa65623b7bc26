#!/usr/bin/env python3
"""PyTorch fine-tuning peers of issue 7's domain fine-tune (the CUDA trainer's quality run 2).

    python3 bench/finetune_pytorch.py --model ref-llama-code/ --train train.txt --setup bf16-adamw \
        --tokens 5e6 --batch 8 --seq 256 --out ft_bf16

Fine-tunes a Hugging Face Llama checkpoint on a text file and saves the result as a Hugging Face
folder (LoRA merged into the weights), so that `primal ppl -m OUT -f eval.txt` scores it with the
same tokenizer and definition as the discrete trainer's model. Setups:
  bf16-adamw   every weight trainable, bf16 weights, fused AdamW, bf16 autocast, SDPA attention
  lora16       LoRA r16 / alpha 32 (peft) on every linear layer of the blocks, bf16 base
Batches are random windows of seq + 1 tokens of the training text (seeded), one optimizer step per
batch, linear warm-up (5%) then cosine to 10%. Prints one JSON line: tokens, seconds, tok/s, the
last training losses and the eval loss of --eval (windows of seq + 1 tokens at stride seq) when given.
"""
import argparse
import json
import math
import os
import shutil
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="Hugging Face folder")
    ap.add_argument("--train", required=True, help="training text")
    ap.add_argument("--eval", help="held-out text (eval loss printed)")
    ap.add_argument("--setup", choices=["bf16-adamw", "lora16"], default="bf16-adamw")
    ap.add_argument("--tokens", type=float, default=5e6, help="training tokens")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lr", type=float, help="peak learning rate (default 1e-4 full, 1e-3 LoRA)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out", help="save the fine-tuned model here (HF folder)")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(args.seed)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16, attn_implementation="sdpa").cuda()
    lr = args.lr or (1e-3 if args.setup == "lora16" else 1e-4)
    if args.setup == "lora16":
        from peft import LoraConfig, get_peft_model
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=targets, lora_dropout=0.0))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0, fused=True)

    def encode(path):
        with open(path, encoding="utf-8") as f:
            return torch.tensor(tok(f.read(), add_special_tokens=False)["input_ids"], dtype=torch.long)

    data = encode(args.train)
    B, T = args.batch, args.seq
    steps = max(1, int(args.tokens // (B * T)))
    warm = max(1, steps // 20)
    gen = torch.Generator().manual_seed(args.seed)

    def lr_at(s):
        if s < warm:
            return lr * (s + 1) / warm
        p = (s - warm) / max(1, steps - warm)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))

    model.train()
    losses = []
    torch.cuda.synchronize()
    t0 = time.time()
    for s in range(steps):
        idx = torch.randint(0, len(data) - T - 1, (B,), generator=gen)
        x = torch.stack([data[i:i + T + 1] for i in idx]).cuda()
        for g in opt.param_groups:
            g["lr"] = lr_at(s)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(input_ids=x[:, :-1])
            loss = torch.nn.functional.cross_entropy(out.logits.float().reshape(-1, out.logits.shape[-1]),
                                                     x[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if s % 50 == 0 or s == steps - 1:
            losses.append((s, float(loss.detach())))
            print(f"step {s + 1}/{steps} loss {losses[-1][1]:.4f}", file=sys.stderr)
    torch.cuda.synchronize()
    dt = time.time() - t0
    res = dict(setup=args.setup, steps=steps, tokens=steps * B * T, seconds=dt, tok_s=steps * B * T / dt, lr=lr,
               last_losses=losses[-3:], peak_gib=torch.cuda.max_memory_allocated() / 2**30)
    if args.eval:
        model.eval()
        ev = encode(args.eval)
        nll, n = 0.0, 0
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            for i in range(0, len(ev) - T - 1 + 1, T):
                x = ev[i:i + T + 1].unsqueeze(0).cuda()
                lg = model(input_ids=x[:, :-1]).logits.float()
                nll += float(torch.nn.functional.cross_entropy(lg[0], x[0, 1:], reduction="sum"))
                n += T
        res["eval_loss"] = nll / n
        res["eval_tokens"] = n
    if args.out:
        if args.setup == "lora16":
            model = model.merge_and_unload()
        model.save_pretrained(args.out, safe_serialization=True)
        for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
            if os.path.exists(os.path.join(args.model, f)):
                shutil.copy(os.path.join(args.model, f), args.out)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
