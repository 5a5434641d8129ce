#!/usr/bin/env bash
# GPU smoke test: does each GPU path of viprog run on this machine? For a machine with a CUDA
# GPU and no network: every model is a tiny random one built here from a config (no download).
#
#   bash bench/gpu_smoke.sh [--device cuda|cuda:N|cpu]     (default cuda; cpu: a dry check of the script)
#
# Parts, each with its own time limit (7.5 minutes together at most; ~2.5 minutes on a busy 2-core CPU):
#   tiny models   build the tiny Qwen2 policy and the neural profile's tiny models
#   hf policy     sample and decode greedily through the hf policy in bf16 on the device (few-shot
#                 prompts with a shared prefix, as in a self-training round, and short prompts without one)
#   neural        find / exists / best_text_match / verify_property / simple_query / compute_depth
#                 through the neural profile, in fp16 on a GPU (fp32 on the CPU)
#   lora step     one viprog.finetune step (TRL + PEFT, activation checkpointing) on the device
#   reinforce     one REINFORCE step of viprog.reinforce's tuner, policy and samples on the device,
#                 rewards computed on the CPU as the demos do
# Prints PASS/FAIL per part (with the tail of a failing part's log) and exits 1 on any FAIL.
set -uo pipefail
cd "$(dirname "$0")/.."
device=cuda
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="${2:?--device needs a value}"; shift 2 ;;
    *) echo "usage: bash bench/gpu_smoke.sh [--device cuda|cuda:N|cpu]" >&2; exit 2 ;;
  esac
done
python="${PYTHON:-.venv/bin/python}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONWARNINGS=ignore
work="$(mktemp -d -t viprog-gpu-smoke.XXXXXX)"
trap 'rm -rf "$work"' EXIT
fails=0
started=$SECONDS
echo "viprog GPU smoke on $device ($(uname -n), $(date -u +%FT%TZ)); logs under $work"

part() {  # part NAME SECONDS < python code (argv: device, work folder); its last line is the summary
  local name=$1 limit=$2 log="$work/${1// /_}.log" t0=$SECONDS
  if timeout "$limit" "$python" - "$device" "$work" >"$log" 2>&1; then
    printf 'PASS  %-12s %4ss  %s\n' "$name" "$((SECONDS - t0))" "$(tail -n 1 "$log")"
  else
    printf 'FAIL  %-12s %4ss  (exit %s; last lines of its log:)\n' "$name" "$((SECONDS - t0))" "$?"
    tail -n 15 "$log" | sed 's/^/      | /'
    fails=$((fails + 1))
  fi
}

part "tiny models" 120 <<'EOF'
import sys
import torch
from viprog.policy.tiny import build_tiny_model
from viprog.primitives.backends.tiny import build_tiny_models

device, work = sys.argv[1:3]
if device.startswith("cuda"):
    assert torch.cuda.is_available(), "no CUDA device visible to torch"
    print(torch.cuda.get_device_name(device), torch.version.cuda)
build_tiny_model(f"{work}/policy")
options = build_tiny_models(f"{work}/neural")
print(f"tiny Qwen2 policy and {sum(v is not None for v in options.values())} primitive models built, torch {torch.__version__}")
EOF

if [ "$fails" -gt 0 ]; then
  echo "gpu smoke on $device: FAIL (the other parts need the device and the tiny models)"
  exit 1
fi

part "hf policy" 90 <<'EOF'
import sys
import torch
from viprog.policy import SamplingParams, load_policy

device, work = sys.argv[1:3]
policy = load_policy("hf", model=f"{work}/policy", device=device, dtype="bfloat16", progress=False)
shots = "# Query: How many stars are there?\ndef execute_command(image):\n    return len(ImagePatch(image).find('star'))\n"
prompts = [f"{shots}# Query: {q}\ndef execute_command(image):\n" for q in ("Is there a circle?", "What color is the big square?")]
sampled = policy.sample(prompts, SamplingParams(n=3, temperature=1.0, max_new_tokens=24, seed=0))
greedy = policy.sample(prompts, SamplingParams(n=1, temperature=0.0, max_new_tokens=24))
again = policy.sample(prompts, SamplingParams(n=1, temperature=0.0, max_new_tokens=24))
short = policy.sample(["# Query: Is it red?\ndef execute_command(image):\n", "# Query: How many?\ndef execute_command(image):\n"],
                      SamplingParams(n=2, temperature=1.0, max_new_tokens=12, seed=0))  # no shared prefix: once NaN
assert [len(s) for s in short] == [2, 2]
weight = next(policy.model.parameters())
assert weight.dtype == torch.bfloat16 and weight.device.type == torch.device(device).type, (weight.dtype, weight.device)
assert [len(s) for s in sampled] == [3, 3] and all(isinstance(t, str) for s in sampled for t in s)
assert greedy == again, "greedy decoding is not deterministic"
print(f"{weight.dtype} on {weight.device}: 2 prompts x 3 samples + greedy twice, equal; short prompts sample")
EOF

part "neural" 90 <<'EOF'
import json
import sys
import numpy as np
import torch
from viprog.primitives import ImagePatch, get_profile
from viprog.primitives.backends.tiny import build_tiny_models
from viprog.primitives.local import LocalServer

device, work = sys.argv[1:3]
options = build_tiny_models(f"{work}/neural")
profile = get_profile("neural", device=device, batch_size=8, **options)
pixels = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
with LocalServer(profile) as server:
    image = ImagePatch(server.add_image("smoke", pixels))
    found = image.find("object")
    answers = [image.exists("circle"), image.best_text_match(["red", "blue"]), image.verify_property("object", "red"),
               image.simple_query("what color is it?"), image.compute_depth()]
want = torch.float16 if device.startswith("cuda") else torch.float32
dtypes = {}
for key, value in profile.models.items():
    modules = [v for v in (value if isinstance(value, tuple) else (value,)) if isinstance(v, torch.nn.Module)]
    params = [p for m in modules for p in m.parameters()]
    if params:
        dtypes[key] = str(params[0].dtype).removeprefix("torch.")
        assert params[0].dtype == want and params[0].device.type == torch.device(device).type, (key, params[0])
assert {"owl", "clip", "vqa", "depth"} <= set(dtypes), sorted(dtypes)
print(f"{len(found)} boxes, answers {json.dumps([str(a)[:12] for a in answers])}; models {dtypes}")
EOF

part "lora step" 90 <<'EOF'
import sys
from transformers import AutoTokenizer
from viprog.finetune import LoraSettings, TrainSettings, finetune

device, work = sys.argv[1:3]
tokenizer = AutoTokenizer.from_pretrained(f"{work}/policy")
prompt = "# Query: How many stars?\ndef execute_command(image):\n"
pairs = [(prompt, "def execute_command(image):\n    return len(ImagePatch(image).find('star'))\n")] * 2
stats = finetune(f"{work}/policy", tokenizer, pairs, f"{work}/adapter", lora=LoraSettings(r=16, alpha=32),
                 train=TrainSettings(epochs=1, batch_size=2, max_length=128), device=device)
assert stats["train/steps"] == 1 and stats["train/checkpointing"] == 1, stats
assert device == "cpu" or "train/peak_gpu_gb" in stats, "trained on the CPU although a GPU was asked for"
print(f"1 step, loss {stats['train/loss_first']:.3f}, checkpointing on, peak GPU {stats.get('train/peak_gpu_gb', '-')} GB")
EOF

part "reinforce" 60 <<'EOF'
import json
import sys
import numpy as np
import torch
from viprog.reinforce.data import CLASSES, generate
from viprog.reinforce.models import PixelPolicy
from viprog.reinforce.rewards import miou
from viprog.reinforce.tuner import PhaseConfig, train

device, work = sys.argv[1:3]
k = len(CLASSES) + 1
shapes = generate(8, 0)
x = torch.from_numpy(shapes.images).permute(0, 3, 1, 2).float().div(255).to(device)
y = torch.from_numpy(shapes.semantic).to(device)
torch.manual_seed(0)
policy = PixelPolicy(3, k).to(device)

def reward(batch, samples):  # per-image mIoU of each sample, on the CPU as the demos' rewards are
    gt, maps = batch["y"].cpu().numpy(), samples.cpu().numpy()
    return np.stack([miou(maps[:, j], gt, k) for j in range(maps.shape[1])], axis=1)

before = [p.detach().clone() for p in policy.parameters()]
train(policy, "reward", lambda step: {"x": x, "y": y}, PhaseConfig(steps=1, warmup=0, num_samples=4, lr=1e-2),
      f"{work}/reinforce", reward_fn=reward, progress=False)
moved = sum(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))
row = json.loads(open(f"{work}/reinforce/metrics.jsonl").read().splitlines()[-1])
assert moved > 0, "no parameter changed"
print(f"1 step on {next(policy.parameters()).device}: reward {row['reward/mean']:.3f}, {moved} tensors updated")
EOF

total=$((SECONDS - started))
if [ "$fails" -eq 0 ]; then
  echo "gpu smoke on $device: all 5 parts PASS in ${total}s"
else
  echo "gpu smoke on $device: $fails of 5 parts FAIL (${total}s)"
  exit 1
fi
