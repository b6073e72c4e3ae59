#!/usr/bin/env bash
# Cross-check against Python: a LoRA made by deltagrad, exported in Hugging Face peft's
# format, loaded by timm + peft (PeftModel.from_pretrained) must give the logits that
# deltagrad gives; then a trained run with its head (modules_to_save). Needs python3 with torch,
# timm, peft and safetensors (e.g. the GPU machine's image, or bench/cpu_bench.sh's .venv-bench
# with timm and peft added). Usage: scripts/check_hf_peft.sh BUILD_DIR
set -euo pipefail
B=${1:?build dir with tools/deltagrad}
W=$(mktemp -d)
python3 - "$W" <<'PY'
import sys, torch, timm
from safetensors.torch import save_file
w = sys.argv[1]
torch.manual_seed(0)
m = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
save_file({k: v.contiguous() for k, v in m.state_dict().items()}, f"{w}/model.safetensors")
save_file({"images": torch.randn(2, 3, 224, 224), "labels": torch.tensor([1, 2])}, f"{w}/batch.safetensors")
PY
cat > "$W/peft.json" <<'JSON'
{"deltas": [{"name": "lora", "method": "lora", "r": 4, "lora_alpha": 8, "init": "random",
             "target_modules": ["blocks.*.attn.qkv", "blocks.*.mlp.fc1"]}]}
JSON
"$B/tools/deltagrad" export-peft --model-config vit_tiny_patch16_224 --model "$W/model.safetensors" --peft "$W/peft.json" --out "$W/hf"
"$B/tools/deltagrad" import-peft --model-config vit_tiny_patch16_224 --model "$W/model.safetensors" --in "$W/hf" --out "$W/d.safetensors"
"$B/tools/deltagrad" grads --model "$W/model.safetensors" --model-config vit_tiny_patch16_224 --deltas "$W/d.safetensors" \
  --batch "$W/batch.safetensors" --out "$W/out.safetensors"
python3 - "$W" <<'PY'
import sys, torch, timm
from peft import PeftModel
from safetensors.torch import load_file
w = sys.argv[1]
m = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
m.load_state_dict(load_file(f"{w}/model.safetensors"))
base = m(load_file(f"{w}/batch.safetensors")["images"])
pm = PeftModel.from_pretrained(m, f"{w}/hf").eval()
with torch.no_grad():
    got = pm(load_file(f"{w}/batch.safetensors")["images"])
ours = load_file(f"{w}/out.safetensors")["logits"]
err = ((got - ours).norm() / ours.norm()).item()
moved = ((got - base).norm() / base.norm()).item()
print(f"peft {__import__('peft').__version__} logits vs deltagrad: relative error {err:.2e} (the LoRA moved the logits by {moved:.2e})")
sys.exit(0 if err < 1e-4 and moved > 1e-3 else 1)
PY

# 2. A trained run's delta file: LoRA, the new task's 3-class head and a LayerNorm trained on a
#    backbone whose checkpoint has another task's 5-class head. export-peft carries the head and
#    the norm as modules_to_save; timm + peft must give deltagrad's logits.
cat > "$W/small.json" <<'JSON'
{"img_size": 28, "patch_size": 4, "in_chans": 1, "embed_dim": 64, "depth": 2, "num_heads": 4,
 "num_classes": 5, "mean": [0.5], "std": [0.5]}
JSON
python3 - "$W" <<'PY'
import sys, torch
from timm.models.vision_transformer import VisionTransformer
from safetensors.torch import save_file
w = sys.argv[1]
torch.manual_seed(1)
m = VisionTransformer(img_size=28, patch_size=4, in_chans=1, num_classes=5, embed_dim=64, depth=2, num_heads=4).eval()
save_file({k: v.contiguous() for k, v in m.state_dict().items()}, f"{w}/small.safetensors")
save_file({"images": torch.randn(4, 1, 28, 28), "labels": torch.tensor([0, 1, 2, 1])}, f"{w}/small_batch.safetensors")
PY
cat > "$W/head.json" <<'JSON'
{"deltas": [{"name": "lora", "method": "lora", "r": 4, "lora_alpha": 8, "target_modules": ["blocks.*.attn.qkv"]}],
 "trainable": ["head.*", "blocks.1.norm1.*"]}
JSON
"$B/tools/deltagrad" train --model-config "$W/small.json" --model "$W/small.safetensors" --peft "$W/head.json" \
  --data fashion-mnist:classes=0-2:n=96 --epochs 2 --batch 16 --lr 5e-3 --quiet --out "$W/run"
"$B/tools/deltagrad" export-peft --model-config "$W/small.json" --model "$W/small.safetensors" \
  --deltas "$W/run/deltas.safetensors" --out "$W/hf_head"
"$B/tools/deltagrad" grads --model "$W/small.safetensors" --model-config "$W/small.json" \
  --deltas "$W/run/deltas.safetensors" --batch "$W/small_batch.safetensors" --out "$W/small_out.safetensors"
python3 - "$W" <<'PY'
import sys, json, torch
from timm.models.vision_transformer import VisionTransformer
from peft import PeftModel
from safetensors.torch import load_file
w = sys.argv[1]
print("modules_to_save:", json.load(open(f"{w}/hf_head/adapter_config.json"))["modules_to_save"])
m = VisionTransformer(img_size=28, patch_size=4, in_chans=1, num_classes=3, embed_dim=64, depth=2, num_heads=4).eval()
base = {k: v for k, v in load_file(f"{w}/small.safetensors").items() if not k.startswith("head.")}
m.load_state_dict(base, strict=False)  # the 5-class head of the checkpoint does not fit: peft brings the trained one
pm = PeftModel.from_pretrained(m, f"{w}/hf_head").eval()
with torch.no_grad():
    got = pm(load_file(f"{w}/small_batch.safetensors")["images"])
ours = load_file(f"{w}/small_out.safetensors")["logits"]
err = ((got - ours).norm() / ours.norm()).item()
print(f"trained head + LoRA + norm via modules_to_save: peft logits vs deltagrad: relative error {err:.2e}")
sys.exit(0 if err < 1e-4 else 1)
PY
