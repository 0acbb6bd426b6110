#!/usr/bin/env bash
# The GPU checks in one call: the CUDA tests (tests/test_cuda.py), benchmarks/gpu.py,
# benchmarks/janus.py (Janus-Pro-1B generation step and image sampling at real size),
# benchmarks/compression_speed.py (compressing a 7B adapter's upload, from the GPU),
# benchmarks/client_processes.py (one client on 1 or 2 processes, ddp and fsdp: the GPU split
# in two, and one GPU each where there are two) and benchmarks/quantization.py (fp32 / bf16 /
# int8 / nf4 bases: memory and step time; its CUDA tests in tests/models/test_quantization.py).
#
# A lent GPU machine has torch, transformers and peft but no network and no pydantic. Here,
# with a network, fetch the wheels it lacks (pinned to what the CPU suite is tested with):
#     benchmarks/gpu_check.sh --fetch          # writes .whl/ (add /.whl/ to .git/info/exclude)
# There, from the repository root (carry .whl), results and logs under OUT:
#     benchmarks/gpu_check.sh OUT [--full]     # --full: every step count and both caps in (e)
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=(pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
        typing_extensions==4.16.0 transformers==5.24.0
        tokenizers==0.23.3 peft==0.21.2 regex==2026.11.19 bitsandbytes==0.50.2)

if [[ "${1:-}" == "--fetch" ]]; then
    mkdir -p .whl
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any -d .whl "${WHEELS[@]}"
    du -sh .whl && exit 0
fi

OUT=${1:?usage: benchmarks/gpu_check.sh OUT [--full] (or --fetch)}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src:$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'peft', peft.__version__)" | tee -a "$OUT/gpu.txt"

python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py tests/models/test_quantization.py \
    2>&1 | tee "$OUT/cuda_tests.log"
tests=${PIPESTATUS[0]}
QUICK=--quick; [[ "${2:-}" == "--full" ]] && QUICK=
python3 benchmarks/gpu.py $QUICK --out "$OUT/gpu.json" 2>&1 | tee "$OUT/gpu_bench.log"
bench=${PIPESTATUS[0]}
python3 benchmarks/janus.py --out "$OUT/janus.json" 2>&1 | tee "$OUT/janus_bench.log"
janus=${PIPESTATUS[0]}
python3 benchmarks/compression_speed.py --device cuda --out "$OUT/compression_speed.json" 2>&1 \
    | tee "$OUT/compression_speed.log"
compress=${PIPESTATUS[0]}
SPLIT=--split; [[ $(nvidia-smi -L | wc -l) -ge 2 ]] && SPLIT=
python3 benchmarks/client_processes.py --device cuda $SPLIT -o "$OUT/client_processes" 2>&1 \
    | tee "$OUT/client_processes.log"
ranks=${PIPESTATUS[0]}
python3 benchmarks/quantization.py --device cuda --hidden 4096 --layers 8 --batch 8 --seq 512 \
    --out "$OUT/quantization.json" 2>&1 | tee "$OUT/quantization.log"
quantized=${PIPESTATUS[0]}
echo "cuda tests exit $tests, benchmark exit $bench, janus exit $janus, compression exit" \
    "$compress, client processes exit $ranks, quantization exit $quantized"
exit $(( tests || bench || janus || compress || ranks || quantized ))
