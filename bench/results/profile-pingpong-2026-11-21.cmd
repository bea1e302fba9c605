+ taskset -c 0 perf record -F 999 --call-graph dwarf,16384 -o /tmp/tmp.AUc3UC1zyz/perf.data -- /tmp/tmp.AUc3UC1zyz/queue-server --config /tmp/tmp.AUc3UC1zyz/server.toml --cores 1 --listen 127.0.0.1:17500 --control 127.0.0.1:17501
+ taskset -c 1 queue-bench pingpong --conns 51 --duration 10s --target 127.0.0.1:17500 --control 127.0.0.1:17501 --threads 1
