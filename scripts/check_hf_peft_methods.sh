#!/usr/bin/env bash
# Cross-check the second-wave methods' Hugging Face peft export: for each of DoRA, IA3, VeRA,
# LoHa and LoKr (non-zero deltas from a seeded init), deltagrad's export is loaded into timm +
# peft (PeftModel.from_pretrained) on a small timm ViT, and peft's logits must equal the
# logits deltagrad computes for the same deltas; import-peft of the export gives deltagrad's
# logits again, bit for bit. Needs a python with torch, timm, peft and
# safetensors (PYTHON, default python3; e.g. .venv-bench/bin/python). Usage:
#   scripts/check_hf_peft_methods.sh BUILD_DIR
set -euo pipefail
B=${1:?build dir with tools/deltagrad}
PY=${PYTHON:-python3}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cat > "$W/small.json" <<'JSON'
{"img_size": 32, "patch_size": 8, "in_chans": 3, "embed_dim": 48, "depth": 2, "num_heads": 4,
 "num_classes": 5, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
JSON
"$PY" - "$W" <<'PY'
import sys, torch
from timm.models.vision_transformer import VisionTransformer
from safetensors.torch import save_file
w = sys.argv[1]
torch.manual_seed(2)
m = VisionTransformer(img_size=32, patch_size=8, in_chans=3, num_classes=5, embed_dim=48, depth=2, num_heads=4).eval()
save_file({k: v.contiguous() for k, v in m.state_dict().items()}, f"{w}/small.safetensors")
save_file({"images": torch.randn(3, 3, 32, 32), "labels": torch.tensor([0, 1, 2])}, f"{w}/batch.safetensors")
PY
declare -A CFG=(
  [dora]='{"method": "dora", "r": 4, "lora_alpha": 8, "init": "random", "target_modules": ["blocks.*.attn.qkv", "blocks.*.mlp.fc1"]}'
  [ia3]='{"method": "ia3", "init_ia3_weights": false}'
  [vera]='{"method": "vera", "r": 8, "init_weights": false, "target_modules": ["blocks.*.attn.qkv", "blocks.*.mlp.fc2"]}'
  [loha]='{"method": "loha", "r": 4, "alpha": 8, "init_weights": false, "target_modules": ["blocks.*.attn.qkv", "blocks.*.attn.proj"]}'
  [lokr]='{"method": "lokr", "r": 2, "alpha": 4, "init_weights": false, "target_modules": ["blocks.*.attn.qkv", "blocks.*.mlp.fc1"]}'
)
fail=0
for m in dora ia3 vera loha lokr; do
  echo "{\"deltas\": [${CFG[$m]}]}" > "$W/$m.json"
  "$B/tools/deltagrad" export-peft --model-config "$W/small.json" --model "$W/small.safetensors" --peft "$W/$m.json" \
    --out "$W/hf_$m" > /dev/null
  "$B/tools/deltagrad" grads --model "$W/small.safetensors" --model-config "$W/small.json" --peft "$W/$m.json" \
    --batch "$W/batch.safetensors" --out "$W/out_$m.safetensors" > /dev/null
  # and back: import-peft of the export gives the same logits
  "$B/tools/deltagrad" import-peft --model-config "$W/small.json" --model "$W/small.safetensors" --in "$W/hf_$m" \
    --out "$W/imp_$m.safetensors" > /dev/null
  "$B/tools/deltagrad" grads --model "$W/small.safetensors" --model-config "$W/small.json" --deltas "$W/imp_$m.safetensors" \
    --batch "$W/batch.safetensors" --out "$W/back_$m.safetensors" > /dev/null
  "$PY" - "$W" "$m" <<'PY' || fail=1
import sys, torch, peft
from timm.models.vision_transformer import VisionTransformer
from peft import PeftModel
from safetensors.torch import load_file
w, m = sys.argv[1], sys.argv[2]
vit = VisionTransformer(img_size=32, patch_size=8, in_chans=3, num_classes=5, embed_dim=48, depth=2, num_heads=4).eval()
vit.load_state_dict(load_file(f"{w}/small.safetensors"))
x = load_file(f"{w}/batch.safetensors")["images"]
with torch.no_grad():
    base = vit(x)
    got = PeftModel.from_pretrained(vit, f"{w}/hf_{m}").eval()(x)
ours = load_file(f"{w}/out_{m}.safetensors")["logits"]
back = load_file(f"{w}/back_{m}.safetensors")["logits"]
assert torch.equal(back, ours), f"{m}: import-peft of the export changed the logits"
err = ((got - ours).norm() / ours.norm()).item()
moved = ((got - base).norm() / base.norm()).item()
print(f"{m}: peft {peft.__version__} logits vs deltagrad: relative error {err:.2e} (the delta moved the logits by {moved:.2e})")
sys.exit(0 if err < 1e-5 and moved > 1e-3 else 1)
PY
done
exit $fail
