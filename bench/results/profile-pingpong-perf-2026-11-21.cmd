+ taskset -c 0 perf record -F 999 --call-graph dwarf,16384 -o RUN/perf.data -- RUN/queue-server --config RUN/server.toml --cores 1 --listen 127.0.0.1:17500 --control 127.0.0.1:17501
+ taskset -c 1 queue-bench pingpong --conns 51 --duration 10s --target 127.0.0.1:17500 --control 127.0.0.1:17501 --threads 1
+ perf script | inferno-collapse-perf | inferno-flamegraph > bench/results/profile-pingpong-perf-2026-11-21.svg
(server config: max_logins_per_sec_per_core = 0, log.level = "warn"; plain release build)
