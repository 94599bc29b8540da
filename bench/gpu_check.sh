#!/usr/bin/env bash
# GPU check for a lent GPU machine, well inside 10 minutes:
#   1. the paper towers (RN50 + DistilBERT, not pretrained) in bf16 at batch 128 and 224 px, clip against
#      isogclr_new for a fixed number of steps: samples/s, step-time ratio, MFU against the bf16 matmul
#      rate measured in the same run, peak memory per loss after a warm-up step (bench/train_throughput.py);
#   2. 256 px JPEGs through the real training loader at 8 and 16 workers, against that step's rate: the
#      share of each step spent waiting for data (bench/data_loading.py --against);
#   3. a 2-epoch quickstart through the real trainer on the GPU (mixed precision "auto"): train, evaluate,
#      checkpoint, test; its summary and meta.json (device, precision, versions) are kept.
# Results: JSON in $OUT when set (the device tool's output folder), else bench/results/gpu/. Data always goes
# to a temporary data root, never the user's.
#
#   bench/gpu_check.sh                # on the GPU machine
#   bench/gpu_check.sh --cpu-dry-run  # anywhere: the same steps, tiny, on the CPU (the fit in bf16)
#
# Without an installed clipctl it runs this checkout (PYTHONPATH); the dependencies must be importable
# (on a bare machine, carry wheels for the missing ones). Exit codes: 2 bad option, 3 missing GPU or package.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=gpu
case "${1:-}" in
  "") ;;
  --cpu-dry-run) mode=cpu ;;
  -h | --help) sed -n '2,18p' "$0" | cut -c3-; exit 0 ;;
  *) echo "gpu_check.sh: unknown option '$1'; run it with no option on a GPU, or with --cpu-dry-run" >&2; exit 2 ;;
esac

python=${PYTHON:-python3}
[ -n "${PYTHON:-}" ] || [ ! -x .venv/bin/python ] || python=.venv/bin/python
results=${OUT:-bench/results/gpu}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$results"
export CLIPCTL_BENCH_RESULTS=$results PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export CLIPCTL_DATA=$work/data  # never regenerate the user's shapes at another size

"$python" - "$mode" <<'EOF' || exit 3
import importlib.util
import sys

needed = ["torch", "timm", "transformers", "tokenizers", "accelerate", "typer", "rich", "pydantic", "tomli_w",
          "skopt", "safetensors", "PIL", "clipctl"]
missing = [name for name in needed if importlib.util.find_spec(name) is None]
if missing:
    sys.exit(f"gpu_check.sh: missing Python packages: {', '.join(missing)}; install clipctl (pip install -e .) "
             "or carry their wheels")
import torch

if sys.argv[1] == "gpu" and not torch.cuda.is_available():
    sys.exit("gpu_check.sh: no CUDA device visible; on a CPU run it with --cpu-dry-run")
print(f"gpu_check.sh: torch {torch.__version__}, "
      + (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"), file=sys.stderr)
EOF

if [ "$mode" = gpu ]; then
  command -v nvidia-smi >/dev/null && nvidia-smi >"$results/nvidia-smi.txt" 2>&1 || true
  throughput=(--device cuda --precision bf16 --batch 128 --steps 20 --rounds 3 --matmul-size 8192)
  loading=(--images 4096 --batch-size 128 --batches 24 --workers 8 16)
  quickstart=(train.device=cuda train.precision=auto train.epochs=2 data.num_workers=8)
  name=quickstart
else
  # fp32 here: CPU bf16 convolutions are emulated (the paper towers ran at 0.1 samples/s); the quickstart fit
  # below exercises the bf16 training path end to end
  throughput=(--device cpu --precision fp32 --batch 2 --image-size 64 --steps 1 --rounds 1 --matmul-size 256)
  loading=(--images 80 --batch-size 16 --batches 3 --workers 0 1)
  quickstart=(train.device=cpu train.precision=bf16 train.epochs=1 data.shapes_train_size=256 train.batch_size=32
              data.num_workers=0)
  name=quickstart_cpu_dry_run
fi

echo "== paper towers: clip vs isogclr_new (${throughput[*]})" >&2
"$python" bench/train_throughput.py --models paper --losses clip isogclr_new --name train_throughput "${throughput[@]}"

echo "== 256 px JPEG loading against the paper step (${loading[*]})" >&2
"$python" bench/data_loading.py --datasets jpeg --against "$results/train_throughput.json" --name data_loading \
  "${loading[@]}"

echo "== quickstart (${quickstart[*]})" >&2
"$python" -m clipctl train quickstart "${quickstart[@]}" --out "$work/runs" --name gpu-quickstart --json \
  >"$results/.$name.json.tmp"
mv "$results/.$name.json.tmp" "$results/$name.json"
cp "$work/runs/gpu-quickstart/meta.json" "$results/${name}_meta.json"
echo "gpu_check.sh: results in $results" >&2
