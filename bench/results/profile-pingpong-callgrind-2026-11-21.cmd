+ taskset -c 0 valgrind --tool=callgrind --callgrind-out-file=bench/results/profile-pingpong-2026-11-21.callgrind.out /tmp/tmp.US0zh79zQw/queue-server --config /tmp/tmp.US0zh79zQw/server.toml --cores 1 --listen 127.0.0.1:17500 --control 127.0.0.1:17501
+ taskset -c 1 queue-bench pingpong --conns 6 --duration 10s --target 127.0.0.1:17500 --control 127.0.0.1:17501 --threads 1
