#!/bin/sh
cd /work/wt4-udpgso
echo "start $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
for pair in 4 5 6; do
 for row in sluice-udp-uring-1w sluice-udp-epoll-1w; do
  for w in udp-bulk; do
   for b in base new; do
    if [ $((pair % 2)) = 0 ]; then [ $b = base ] && b2=new || b2=base; else b2=$b; fi
    line=$(python3 bench/suite/profile.py --lb $row --workload $w --tool none --duration 10 --sluice /tmp/wt4-$b2 2>&1 | tail -1)
    echo "$pair $row $w $b2 | $line"
   done
  done
 done
done
echo "end $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
