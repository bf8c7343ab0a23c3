#!/usr/bin/env bash
# Train the shared bases that `hydrahead export bundle` ships (export/shipped_bases/): labels of
# every member of the offline simulator family on both git-lamp tasks' TRAINING users, one fit
# over all of them (bench/train_family.sh, protocol "shipped"), then copied into the package with
# their training report. The dev users stay unseen: evaluate the bundle with
#   hydrahead export bundle --out B && hydrahead --bundle B bench quality --family \
#       --data ../shared/data/git-lamp-q10 --task GIT_area --no-binary --report bench/QUALITY.md
#
#   bash bench/train_shipped.sh [DATA] [WORK]      (USERS=20: about 35 min on 2 cores)
#
# Environment: USERS (training users per task, default 20, as shipped), MEMBERS, WORKERS (as in
# train_family.sh). Every label comes from hydrahead's OFFLINE SIMULATOR family, not a
# language model.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/git-lamp-q10}
WORK=${2:-.hydrahead-cache/train-shipped}
export USERS=${USERS:-20}
PROTOCOLS=shipped bash bench/train_family.sh "$DATA" "$WORK/bundles" "$WORK"
mkdir -p export/shipped_bases
cp "$WORK/trained/shipped/all/"{reranker.npz,adapter.npz,training.json} export/shipped_bases/
echo "export/shipped_bases/ updated from $WORK/trained/shipped/all; now evaluate the bundle" \
    "(header), then: python bench/shipped_dev_summary.py COMMIT FAMILY_JSON... (dev.json)" >&2
