//! queue-bench: the load tool for queue-server. It drives a running server over real
//! TCP and HTTP (or the queue core in process) and prints QPS, an hdrhistogram RTT
//! summary (p50 .. p99.99, max) measured from intended send times beside the bench's
//! own send lag, a per-second series, errors by protocol code and, with the server's
//! `count-alloc` build, server allocations per request and per push; optionally the
//! same load against its echo server in the same run. The map:
//!
//! - [`scenario`]: storm, steady, pingpong, drain (sockets) and core (in process);
//! - [`echo`]: the bare frame echo server, the machine's ceiling for `pingpong`;
//! - [`client`]: client threads (monoio), connections, frame reading, login;
//! - [`wire`]: request encoders and reply decoding;
//! - [`pace`]: intended send times (ramps, evenly spread periodic schedules);
//! - [`pacer`]: waiting for an intended time to within tens of microseconds;
//! - [`series`]: warm-up and measured window, the per-second time series;
//! - [`hist`]: latency histograms, their summaries and `.hgrm` spectra;
//! - [`report`]: per-thread tallies and the printed / JSON report;
//! - [`counters`]: `/metrics` counters and the allocation window;
//! - [`http`]: the control-port client; [`limits`]: descriptor and port budgets;
//! - [`procs`]: spreading users over several bench processes (`--procs`).

pub mod client;
pub mod counters;
pub mod echo;
pub mod hist;
pub mod http;
pub mod limits;
pub mod pace;
pub mod pacer;
pub mod procs;
pub mod report;
pub mod scenario;
pub mod series;
pub mod wire;
