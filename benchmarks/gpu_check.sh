#!/usr/bin/env bash
# GPU checks and GPU benchmarks (issue 6), on a machine with one CUDA GPU. CI and the
# CPU-only test suite never run this; tests/test_gpu.py is skipped there.
#
#   benchmarks/gpu_check.sh OUT [DATA [PART ...]]   # DATA: the shared datasets (../shared/data)
#
# Parts (default: all three, in this order; each has its own time limit, in seconds):
#   tests       tests/test_gpu.py: training, prediction, embeddings, markers and model files on
#               the GPU, against the CPU (about 2.5 min on an H100 machine)      TEST_LIMIT=300
#   throughput  benchmarks/throughput.py on the GPU, alone on it: the paper's sizes and 8x larger
#               batches, fp32 then bf16, on the Zheng sorted PBMCs (each measurement's process
#               took about 40 s there, most of it importing)                   THROUGHPUT_LIMIT=420
#   cv          bf16 against fp32 pre-training + fine-tuning, 5-fold CV on baron_mouse1, a fold's
#               two precisions side by side (ten processes at once did not finish
#               in 200 s)                                                           CV_LIMIT=400
# Logs and results land in OUT (throughput/, cv/, proba/).
set -u
out=$1
data=${2:-../shared/data}
shift $(($# < 2 ? $# : 2))
parts=${*:-tests throughput cv}
py=${PYTHON:-python3}
mkdir -p "$out/throughput" "$out/cv" "$out/proba"
nvidia-smi >"$out/nvidia-smi.txt" 2>&1
for part in $parts; do
    case $part in
    tests)
        timeout -s INT "${TEST_LIMIT:-300}" "$py" -m pytest tests/test_gpu.py -p no:cacheprovider -v -rA \
            --durations=10 >"$out/test_gpu.log" 2>&1
        ;;
    throughput)
        for bf16 in "" --bf16; do
            timeout "${THROUGHPUT_LIMIT:-420}" "$py" benchmarks/throughput.py --accelerator gpu $bf16 --threads 8 \
                --data "$data/zheng_sorted_pbmc_fasttopics.h5ad" --configs paper paper-large-batch \
                --out "$out/throughput" >"$out/throughput/log${bf16}.txt" 2>&1
        done
        ;;
    cv)
        bf16_args=(--train-kwargs '{"precision": "bf16-mixed"}' --pretrain-kwargs '{"precision": "bf16-mixed"}'
            --bf16-inference)
        for fold in 0 1 2 3 4; do
            for precision in fp32 bf16; do
                extra=()
                [ "$precision" = bf16 ] && extra=("${bf16_args[@]}")
                timeout "${CV_LIMIT:-400}" "$py" benchmarks/annotation_cv.py --data "$data/baron_mouse1.h5ad" \
                    --folds "$fold" --transductive --pretrain-steps 2000 --threads 4 --save-proba "$out/proba" \
                    --tag "gpu_transductive-pretrain2000_$precision" --out "$out/cv" "${extra[@]}" \
                    >"$out/cv/fold${fold}_$precision.log" 2>&1 &
            done
            wait
        done
        ;;
    *) echo "unknown part $part (tests, throughput, cv)" >&2 && exit 2 ;;
    esac
done
echo "done: $(ls "$out"/throughput/*.json "$out"/cv/*.json 2>/dev/null | wc -l) result files in $out"
