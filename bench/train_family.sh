#!/usr/bin/env bash
# Build the protocol bundles that `hydrahead bench quality --family --protocol P --bases OUT`
# evaluates (hydrahead/evaluation/family.py), from labels of the offline simulator family on the
# TRAINING users (the evaluation runs on the dev users: other people):
#
#   OUT/matched/<member>/   bases trained with that member's labels (every task)
#   OUT/transfer/<member>/  bases trained with every OTHER member's labels: leave one LLM out
#   OUT/loto/<task>/        bases trained with every member's labels on every OTHER task
#   OUT/shipped/all/        bases trained with every member's labels on every task: the bases
#                           `hydrahead export bundle` ships (export/shipped_bases/, copied there
#                           by bench/train_shipped.sh)
#
#   bash bench/train_family.sh [DATA] [OUT] [WORK]
#
#   DATA  LaMP-format directory (default ../shared/data/git-lamp-q10)
#   OUT   where the bundles go (default .hydrahead-cache/family-bases)
#   WORK  labels, merged datasets, trained bases, label caches (default
#         .hydrahead-cache/train-family; a rerun resumes: finished label files are kept, and an
#         interrupted labelling resumes from its caches)
#
# Environment (every one optional):
#   MEMBERS    members, comma- or space-separated (default: every member of
#              hydrahead.offline.family.MEMBERS)
#   TASKS      tasks (default "GIT_area GIT_subject"); an entry NAME=DIR:TASK labels TASK (a name
#              or a spec file) from the LaMP directory DIR instead of DATA, as NAME
#   USERS      label only the first N training users of each task (default: all)
#   SHARDS     label each (member, task) in this many shards at once (`train labels --shard
#              i/n`), merged with `train merge` (default 1)
#   BUDGET     LLM calls per labelled user (default 200); WORKERS users at once per process (2)
#   PROTOCOLS  which bundles to build (default "matched transfer loto"; "shipped" also exists)
#   HYDRAHEAD_BUNDLE  the bundle whose encoder embeds and whose bases label (default
#              .hydrahead-cache/test-bundle); every protocol bundle is a copy of it with
#              trained bases
#
# At full scale (9 members x 2 tasks x every training user, then 9 + 9 + 2 trainings and
# exports) this takes HOURS on 2 cores. For a reduced run, e.g.:
#   USERS=12 MEMBERS=default,majority,nearest bash bench/train_family.sh
# Then, on the dev users:
#   hydrahead bench quality --data DATA --task GIT_area --members default,majority,nearest \
#       --protocol transfer --bases OUT --report bench/QUALITY.md
#
# Every label comes from hydrahead's OFFLINE SIMULATOR family, not a language model.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/git-lamp-q10}
OUT=${2:-.hydrahead-cache/family-bases}
WORK=${3:-.hydrahead-cache/train-family}
export HYDRAHEAD_BUNDLE=${HYDRAHEAD_BUNDLE:-.hydrahead-cache/test-bundle}
TASKS=${TASKS:-GIT_area GIT_subject}
SHARDS=${SHARDS:-1}
BUDGET=${BUDGET:-200}
WORKERS=${WORKERS:-2}
PROTOCOLS=${PROTOCOLS:-matched transfer loto}
if [ -z "${MEMBERS:-}" ]; then
    MEMBERS=$(python -c "from hydrahead.offline.family import MEMBERS; print(' '.join(MEMBERS))")
fi
read -ra MEMBER_LIST <<< "${MEMBERS//,/ }"
read -ra TASK_LIST <<< "${TASKS//,/ }"
USERS_OPT=()
if [ -n "${USERS:-}" ]; then USERS_OPT=(--users "$USERS"); fi
mkdir -p "$WORK" "$OUT"
echo "members: ${MEMBER_LIST[*]}; tasks: ${TASK_LIST[*]}; users: ${USERS:-all}; shards: $SHARDS" >&2

# A TASKS entry: TASK (from DATA) or NAME=DIR:TASK
name_of() { echo "${1%%=*}"; }
data_of() { case $1 in *=*) local rest=${1#*=}; echo "${rest%%:*}" ;; *) echo "$DATA" ;; esac; }
task_of() { case $1 in *=*) local rest=${1#*=}; echo "${rest#*:}" ;; *) echo "$1" ;; esac; }

# 1. labels: one dataset per (member, task), in SHARDS shards merged into one
labels() {  # labels MEMBER TASK -> $WORK/labels/MEMBER/NAME.npz
    local member=$1 task dir="$WORK/labels/$1" shard pids=() parts=() data
    task=$(name_of "$2")
    data=$(data_of "$2")
    local out="$dir/$task.npz"
    if [ -f "$out" ]; then return; fi
    mkdir -p "$dir"
    for ((shard = 0; shard < SHARDS; shard++)); do
        parts+=("$dir/$task.shard-$shard-of-$SHARDS.npz")
        hydrahead train labels --data "$data" --task "$(task_of "$2")" --split train \
            "${USERS_OPT[@]}" \
            --shard "$shard/$SHARDS" --offline "$member" --llm-name "offline simulator $member" \
            --budget "$BUDGET" --workers "$WORKERS" --out "${parts[-1]}" \
            --work "$WORK/work/$member/$task/shard-$shard-of-$SHARDS" >/dev/null &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
    hydrahead train merge "$dir/$task.partial.npz" "${parts[@]}" --overwrite
    mv "$dir/$task.partial.npz" "$out"
}
for member in "${MEMBER_LIST[@]}"; do
    for task in "${TASK_LIST[@]}"; do
        labels "$member" "$task"
    done
done

# 2. one bundle: merge the datasets, train the bases on them, export into a copy of the bundle
build() {  # build PROTOCOL NAME DATASET...
    local protocol=$1 name=$2
    shift 2
    local merged="$WORK/merged/$protocol/$name.npz" trained="$WORK/trained/$protocol/$name"
    mkdir -p "$(dirname "$merged")"
    echo "== $protocol/$name: $*" >&2
    hydrahead train merge "$merged" "$@" --overwrite
    hydrahead train fit "$merged" --out "$trained"
    rm -rf "${OUT:?}/$protocol/$name"
    mkdir -p "$OUT/$protocol"
    hydrahead train export "$trained" --out "$OUT/$protocol/$name"
}
for protocol in $PROTOCOLS; do
    case $protocol in
    matched)
        for member in "${MEMBER_LIST[@]}"; do
            inputs=()
            for task in "${TASK_LIST[@]}"; do
                inputs+=("$WORK/labels/$member/$(name_of "$task").npz")
            done
            build matched "$member" "${inputs[@]}"
        done ;;
    transfer)
        if [ "${#MEMBER_LIST[@]}" -lt 2 ]; then
            echo "transfer needs 2 members or more: skipped" >&2
            continue
        fi
        for member in "${MEMBER_LIST[@]}"; do
            inputs=()
            for other in "${MEMBER_LIST[@]}"; do
                [ "$other" = "$member" ] && continue
                for task in "${TASK_LIST[@]}"; do
                    inputs+=("$WORK/labels/$other/$(name_of "$task").npz")
                done
            done
            build transfer "$member" "${inputs[@]}"
        done ;;
    loto)
        if [ "${#TASK_LIST[@]}" -lt 2 ]; then
            echo "loto needs 2 tasks or more: skipped" >&2
            continue
        fi
        for task in "${TASK_LIST[@]}"; do
            inputs=()
            for member in "${MEMBER_LIST[@]}"; do
                for other in "${TASK_LIST[@]}"; do
                    [ "$other" = "$task" ] && continue
                    inputs+=("$WORK/labels/$member/$(name_of "$other").npz")
                done
            done
            build loto "$(name_of "$task")" "${inputs[@]}"
        done ;;
    shipped)
        inputs=()
        for member in "${MEMBER_LIST[@]}"; do
            for task in "${TASK_LIST[@]}"; do
                inputs+=("$WORK/labels/$member/$(name_of "$task").npz")
            done
        done
        build shipped all "${inputs[@]}" ;;
    *) echo "unknown protocol $protocol (matched, transfer, loto, shipped)" >&2; exit 2 ;;
    esac
done
echo "protocol bundles in $OUT: evaluate with" >&2
members=$(IFS=,; echo "${MEMBER_LIST[*]}")
echo "  hydrahead bench quality --data $DATA --task TASK --members $members --protocol P \\
      --bases $OUT --report bench/QUALITY.md" >&2
