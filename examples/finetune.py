"""Fine-tune a paper-scale ViT from timm's published ImageNet weights on CIFAR-10.

minivit downloads nothing: fetch the weights file yourself, e.g. ViT-Ti/16 (AugReg, 5.7M
parameters) from timm's page on the Hugging Face Hub:

    curl -L -o vit_tiny.safetensors \\
      https://huggingface.co/timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k/resolve/main/model.safetensors
    python examples/finetune.py --weights vit_tiny.safetensors --dataset cifar10 --data DIR

The parameter names of minivit's ViT are timm's, so the file loads strictly into
``vit_tiny_patch16_224``; the 1000-class ImageNet head is then replaced by a fresh 10-class one
(``reset_classifier``). CIFAR's 32x32 images are upsampled to the model's input size by pixel
repetition (224 = 7 x 32) and normalised with the weights' own mean and std (0.5 for timm's
AugReg ViTs). The loop is the PyTorch one: AdamW without decay on norms, biases and tokens,
LinearLR warmup then CosineAnnealingLR (SequentialLR), gradient clipping, cross-entropy.
A 224x224 ViT is slow on a CPU: use ``--device cuda`` (CuPy) or a few ``--steps`` to try it.
"""
import argparse
import ast
import json
import time

import numpy as np

import minivit
import minivit.nn.functional as F
from minivit import nn, optim
from minivit.data import CIFARLoader, load_dataset
from minivit.models import create_model
from minivit.weights import save_state_dict_file

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--weights", required=True, help="timm's model.safetensors (or a .npz)")
parser.add_argument("--model", default="vit_tiny_patch16_224")
parser.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="configuration entry of the weights' model, e.g. depth=12")
parser.add_argument("--dataset", default="cifar10-subset",
                    help="cifar10-subset (bundled, 4000 images), cifar10 or cifar100")
parser.add_argument("--data", default=None, help="folder or archive of the dataset")
parser.add_argument("--epochs", type=int, default=1)
parser.add_argument("--steps", type=int, default=None, help="stop after this many steps")
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--lr", type=float, default=1e-4)
parser.add_argument("--warmup-steps", type=int, default=50)
parser.add_argument("--mean", type=float, nargs=3, default=(0.5, 0.5, 0.5))
parser.add_argument("--std", type=float, nargs=3, default=(0.5, 0.5, 0.5))
parser.add_argument("--train-limit", type=int, default=None)
parser.add_argument("--test-limit", type=int, default=500)
parser.add_argument("--device", default="cpu", help="cpu or cuda (needs CuPy)")
parser.add_argument("--out", default="finetuned.safetensors")
args = parser.parse_args()

minivit.manual_seed(0)
overrides = {k: ast.literal_eval(v) for k, v in (a.split("=", 1) for a in args.model_arg)}
model = create_model(args.model, checkpoint_path=args.weights, **overrides)   # strict, timm names
ds = load_dataset(args.dataset, args.data)
model.reset_classifier(ds.num_classes)                  # a new head: ImageNet's 1000 -> 10
model.to(args.device)
img_size = model.patch_embed.img_size[0]
scale = img_size // 32
if scale * 32 != img_size:
    raise SystemExit(f"{args.model} takes {img_size}x{img_size} images, not a multiple of 32")

n, m = args.train_limit, args.test_limit
train = CIFARLoader(ds.x_train[:n], ds.y_train[:n], batch_size=args.batch_size, shuffle=True,
                    augment="standard", mean=args.mean, std=args.std)
test = CIFARLoader(ds.x_test[:m], ds.y_test[:m], batch_size=64, shuffle=False,
                   mean=args.mean, std=args.std)
total = min(args.steps or 10**9, args.epochs * len(train))

opt = optim.AdamW(optim.param_groups_weight_decay(model, weight_decay=0.05), lr=args.lr)
warmup = min(args.warmup_steps, max(total - 1, 1))
sched = optim.lr_scheduler.SequentialLR(opt, [
    optim.lr_scheduler.LinearLR(opt, start_factor=0.01, total_iters=warmup),
    optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total - warmup, 1))], milestones=[warmup])
print(f"{args.model} from {args.weights}: {model.num_parameters():,} parameters, "
      f"{img_size}x{img_size} input, {total} steps of {args.batch_size}")


def upsample(x: np.ndarray) -> minivit.Tensor:
    """(B, 3, 32, 32) -> (B, 3, 32 s, 32 s) by repeating each pixel s x s times."""
    return minivit.tensor(x.repeat(scale, axis=2).repeat(scale, axis=3), device=args.device)


def evaluate() -> float:
    model.eval()
    correct = 0
    with minivit.inference_mode():
        for x, y in test:
            _, pred = model(upsample(x)).max(dim=1)     # (values, indices), as torch
            correct += int((pred.numpy() == y).sum())
    model.train()
    return correct / len(test.x)


step, t0 = 0, time.perf_counter()
model.train()
while step < total:
    for x, y in train:
        loss = F.cross_entropy(model(upsample(x)), minivit.tensor(y, device=args.device),
                               label_smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        opt.step()
        sched.step()
        step += 1
        print(f"\rstep {step}/{total}  loss {loss.item():.3f}  lr {sched.get_last_lr()[0]:.2e}",
              end="", flush=True)
        if step == total:
            break
print(f"\n{step} steps in {time.perf_counter() - t0:.0f}s; test accuracy "
      f"{100 * evaluate():.2f}% on {len(test.x)} images")
save_state_dict_file(args.out, model.state_dict(),      # minivit eval FILE reads these back
                     metadata={"model": args.model, "model_args": json.dumps(overrides),
                               "dataset": args.dataset})
print(f"wrote {args.out}")
