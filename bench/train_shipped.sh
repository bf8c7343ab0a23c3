#!/usr/bin/env bash
# Train the shared bases that `hydrahead export bundle` ships (export/shipped_bases/): labels of
# every member of the offline simulator family on the TRAINING users of four tasks (both
# git-lamp tasks; the synthetic persona world, whose users changed a habit lately; and the
# persona world again as a task given only by a spec file, other users under another label set:
# `hydrahead bench world [--spec-task]`), one fit over all of them (bench/train_family.sh,
# protocol "shipped"), then copied into the package with their training report. The dev users stay unseen: evaluate the bundle with
#   hydrahead export bundle --out B && hydrahead --bundle B bench quality --family \
#       --data ../shared/data/git-lamp-q10 --task GIT_area --no-binary --report bench/QUALITY.md
#
#   bash bench/train_shipped.sh [DATA] [WORK]      (USERS=20: about an hour on 2 cores)
#
# Environment: USERS (training users per task, default 20, as shipped), MEMBERS, WORKERS, TASKS
# (as in train_family.sh; default the four above). Every label comes from hydrahead's OFFLINE SIMULATOR family, not a
# language model.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/git-lamp-q10}
WORK=${2:-.hydrahead-cache/train-shipped}
export USERS=${USERS:-20}
if [ -z "${TASKS:-}" ]; then
    hydrahead bench world --out "$WORK/persona-world" --train-users "$USERS" --dev-users 1 >&2
    hydrahead bench world --out "$WORK/spec-world" --spec-task --train-users "$USERS" \
        --dev-users 1 >&2
    TASKS="GIT_area GIT_subject persona=$WORK/persona-world:GIT_area"
    TASKS="$TASKS spec=$WORK/spec-world:$WORK/spec-world/task.json"
fi
export TASKS
PROTOCOLS=shipped bash bench/train_family.sh "$DATA" "$WORK/bundles" "$WORK"
mkdir -p export/shipped_bases
cp "$WORK/trained/shipped/all/"{reranker.npz,adapter.npz,training.json} export/shipped_bases/
echo "export/shipped_bases/ updated from $WORK/trained/shipped/all; now evaluate the bundle" \
    "(header), then: python bench/shipped_dev_summary.py COMMIT FAMILY_JSON... (dev.json)" >&2
