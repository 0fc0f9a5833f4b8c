#!/usr/bin/env bash
# qcow2 overlay options ($CELL_QCOW2_OPTIONS), side by side. Usage: scripts/bench-qcow2.sh ROUND
# (it runs VMs: run it alone). Per configuration: a fresh data directory (the image shared), a
# 3-step build with --no-cache, its steps' times and its layers' own sizes, then ten
# `cell run --template q -- true` timings; one JSON line each.
set -euo pipefail
CELL=${CELL_BIN:-$(dirname "$0")/../bin/cell}
ctx=${WORK:-/tmp/cell-qcow2-bench}/ctx; mkdir -p $ctx
cat > $ctx/Dockerfile <<'DF'
FROM base
RUN dd if=/dev/urandom of=/home/user/big bs=1M count=256 status=none && sync
RUN mkdir -p /home/user/s && python3 -c "[open(f'/home/user/s/{i}','w').write('x'*4096) for i in range(20000)]" && sync
RUN rm -f /home/user/big && sync
DF
round=${1:-1}
for cfg in default lazy c128 ; do
  case $cfg in
    default) opts="";;
    lazy) opts="lazy_refcounts=on";;
    c128) opts="cluster_size=128k,extended_l2=on,lazy_refcounts=on";;
  esac
  home=${WORK:-/tmp/cell-qcow2-bench}/home-$cfg-$round; rm -rf $home; mkdir -p $home
  export CELL_HOME=$home CELL_IMAGE_HOME=${CELL_IMAGE_HOME:-$HOME/.local/share/cell} CELL_QCOW2_OPTIONS="$opts"
  $CELL run -- true >/dev/null 2>&1   # the base template
  t0=$(date +%s%N)
  $CELL template build --no-cache --name q $ctx 2> ${WORK:-/tmp/cell-qcow2-bench}/build-$cfg-$round.log
  t1=$(date +%s%N)
  steps=$(grep -o 'done in [0-9.]*m\?s' ${WORK:-/tmp/cell-qcow2-bench}/build-$cfg-$round.log | tr '\n' ' ')
  sizes=""
  for d in $home/templates/layer-*/snap; do sizes="$sizes $(du -k $d/disk.qcow2 | cut -f1)"; done
  runs=""
  for i in $(seq 10); do s=$(date +%s%N); $CELL run --template q -- true; e=$(date +%s%N); runs="$runs $(( (e-s)/1000000 ))"; done
  echo "{\"cfg\":\"$cfg\",\"round\":$round,\"build_ms\":$(( (t1-t0)/1000000 )),\"steps\":\"$steps\",\"layer_kib\":\"$sizes\",\"run_ms\":\"$runs\"}"
done
