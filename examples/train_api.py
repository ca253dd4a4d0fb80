"""Train a CIFAR model with the Python API: the whole loop on one screen.

    python examples/train_api.py                                  # vit_cifar, 3 epochs, 2000 images
    python examples/train_api.py --model mlp_mixer_cifar --epochs 10 --train-limit 4000

Data from the bundled CIFAR-10 subset (no download), AdamW with parameter groups (no weight
decay on norms, biases and tokens), linear warmup then cosine per step, cross-entropy with
label smoothing, evaluation after each epoch. ``minivit train`` does the same with
checkpoints, resume and a metrics log (minivit/train.py).
"""
import argparse
import time

import minivit
import minivit.nn.functional as F
from minivit import optim
from minivit.data import CIFARLoader, load_dataset
from minivit.models import create_model, list_models

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--model", default="vit_cifar", choices=list_models("cifar"))
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--batch-size", type=int, default=64)
parser.add_argument("--lr", type=float, default=1e-3)
parser.add_argument("--train-limit", type=int, default=2000, help="first N of 4000 train images")
parser.add_argument("--test-limit", type=int, default=500, help="first N of 1000 test images")
parser.add_argument("--device", default="cpu", help="cpu or cuda (needs CuPy)")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

minivit.manual_seed(args.seed)  # model init (and dropout); the loader has its own seed
ds = load_dataset("cifar10-subset")  # uint8 (N, 32, 32, 3) images, int64 labels
n, m = args.train_limit, args.test_limit
train = CIFARLoader(ds.x_train[:n], ds.y_train[:n], batch_size=args.batch_size, shuffle=True,
                    augment="standard", seed=args.seed)  # random crop + flip, background thread
test = CIFARLoader(ds.x_test[:m], ds.y_test[:m], batch_size=256, shuffle=False)

model = create_model(args.model, num_classes=ds.num_classes).to(args.device)
opt = optim.AdamW(optim.param_groups_weight_decay(model, weight_decay=0.05), lr=args.lr)
sched = optim.lr_scheduler.WarmupCosineLR(opt, warmup_steps=len(train),  # 1 epoch of warmup
                                          total_steps=args.epochs * len(train))
print(f"{args.model}: {model.num_parameters():,} parameters, {len(train.x)} train / "
      f"{len(test.x)} test images, {len(train)} steps per epoch")


def evaluate() -> float:
    model.eval()  # (dropout off, BatchNorm on running statistics)
    correct = 0
    with minivit.no_grad():  # no graph: less memory, faster
        for x, y in test:
            logits = model(minivit.tensor(x, device=args.device))
            correct += int((logits.numpy().argmax(axis=1) == y).sum())
    model.train()
    return correct / len(test.x)


for epoch in range(args.epochs):
    t0 = time.perf_counter()
    for step, (x, y) in enumerate(train):  # x float32 (B, 3, 32, 32), normalised; y int64 (B,)
        logits = model(minivit.tensor(x, device=args.device))
        loss = F.cross_entropy(logits, minivit.tensor(y, device=args.device), label_smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()  # the learning rate of the next step
        print(f"\repoch {epoch + 1}/{args.epochs}  step {step + 1:3d}/{len(train)}  "
              f"loss {loss.item():.3f}  lr {sched.get_last_lr()[-1]:.2e}", end="", flush=True)
    seconds = time.perf_counter() - t0
    print(f"  test acc {100 * evaluate():5.2f}%  ({seconds:.0f}s, {len(train.x) / seconds:.0f} img/s)")
