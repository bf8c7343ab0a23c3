#!/usr/bin/env bash
# Train fast-mode shared bases on git-lamp's training users, export them into a copy of the test
# bundle, and evaluate on the dev users (default simulator, then three other simulated LLMs the
# bases never saw); then cross-mode bases, evaluated with the default simulator. Writes
# bench/QUALITY.md's "trained" sections, bench/results/, and the GIT_subject bases the latency
# benchmark uses (bench/trained-bases/GIT_subject/).
#
#   bash bench/train_bases.sh [DATA] [WORK]        (about 75 min on 2 cores)
#
# Every answer comes from hydrahead's OFFLINE SIMULATOR, not a language model.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/git-lamp}
WORK=${2:-.hydrahead-cache/train-bases}
export HYDRAHEAD_BUNDLE=${HYDRAHEAD_BUNDLE:-.hydrahead-cache/test-bundle}
mkdir -p "$WORK"
for TASK in GIT_area GIT_subject; do
    hydrahead train labels --data "$DATA" --task "$TASK" --out "$WORK/$TASK-labels.npz" \
        --work "$WORK/$TASK-work" --offline --workers 2
    hydrahead train fit "$WORK/$TASK-labels.npz" --out "$WORK/$TASK-trained"
    rm -rf "$WORK/$TASK-bundle"
    hydrahead train export "$WORK/$TASK-trained" --out "$WORK/$TASK-bundle"
    hydrahead --bundle "$WORK/$TASK-bundle" bench quality --data "$DATA" --task "$TASK" \
        --offline --no-binary --report bench/QUALITY.md
    python bench/robustness.py --data "$DATA" --task "$TASK" --bundle "$WORK/$TASK-bundle" \
        --report bench/QUALITY.md
    # cross mode (HYDRA's cross-encoder; 2 layers, 64 tokens per pair: the device's latency
    # budget), on a sample of 500 labelled groups per role (2 cores)
    hydrahead train fit "$WORK/$TASK-labels.npz" --out "$WORK/$TASK-cross" --mode cross \
        --epochs 2 --base-head-epochs 30 --max-groups 500
    rm -rf "$WORK/$TASK-cross-bundle"
    hydrahead train export "$WORK/$TASK-cross" --out "$WORK/$TASK-cross-bundle"
    hydrahead --bundle "$WORK/$TASK-cross-bundle" bench quality --data "$DATA" --task "$TASK" \
        --offline --no-binary --report bench/QUALITY.md
    # the bundle to ship: the same bases, their dev metrics in the manifest
    rm -rf "$WORK/$TASK-bundle-shipped"
    hydrahead train export "$WORK/$TASK-trained" --out "$WORK/$TASK-bundle-shipped" \
        --metrics "bench/results/quality-$(basename "$DATA")-$TASK-dev-trained-bases.json"
done
mkdir -p bench/trained-bases/GIT_subject
cp "$WORK/GIT_subject-trained/"{reranker.npz,adapter.npz,training.json} \
    bench/trained-bases/GIT_subject/
