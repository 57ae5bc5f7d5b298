#!/bin/sh
cd /work/wt4-udpgso
echo "start $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
for pair in 1 2 3; do
 for row in sluice-udp-uring-1w sluice-udp-epoll-1w; do
  for w in udp-bulk udp-dns udp-flows; do
   for b in base new; do
    if [ $((pair % 2)) = 0 ]; then [ $b = base ] && b2=new || b2=base; else b2=$b; fi
    line=$(python3 bench/suite/profile.py --lb $row --workload $w --tool none --duration 5 --sluice /tmp/wt4-$b2 2>&1 | tail -1)
    echo "$pair $row $w $b2 | $line"
   done
  done
 done
done
for b in new base; do
 python3 bench/suite/profile.py --lb sluice-udp-epoll-1w --workload udp-bulk --tool syscalls --duration 4 --sluice /tmp/wt4-$b > /tmp/wt4-ab/syscalls-$b.txt 2>&1
done
echo "end $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
