#!/usr/bin/env bash
# Cross-check against Python: a LoRA made by deltagrad, exported in Hugging Face peft's
# format, loaded by timm + peft (PeftModel.from_pretrained) must give the logits that
# deltagrad gives. Needs python3 with torch, timm, peft and safetensors (e.g. the GPU
# machine's image). Usage: scripts/check_hf_peft.sh BUILD_DIR
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
