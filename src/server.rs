//! Builds and runs the whole server from a [`Config`]: binds the listeners, creates the
//! channels and doorbells before any thread starts, starts the io loops, the queue core
//! and the control thread, and stops them in order.
//!
//! Invariants:
//! - every listener is bound (and every channel exists) before any loop runs, so a
//!   bind error fails `start` with nothing left running;
//! - stop order: draining flag (healthz and readyz 503, logins refused) -> loops kick
//!   everyone and exit -> core flushes and exits -> control thread exits (its
//!   connections get a second to finish the answer in flight).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;
use socket2::{Domain, Protocol, Socket, Type};

use crate::cluster::link::edge::LoopOut;
use crate::cluster::link::start::{LinkParts, NodeLink};
use crate::cluster::routes::Routes;
use crate::cluster::ClusterHandle;
use crate::config::{AuthMode, Config};
use crate::control::{self, ClusterControl, ControlContext};
use crate::doorbell::{self, Bell};
use crate::io_loop::{self, connection_budget, LoopConfig, LoopSetup, Placement};
use crate::limits::ConnLimits;
use crate::msg::{CoreMsg, LoopEvent};
use crate::queue::core::{AdmitFence, ClusterFence, Core, CoreTiming, LoopLink};
use crate::queue::durability::{self, Durability, DurabilityStatus, RecoveryError};
use crate::queue::state::{Limits, QueueState};
use crate::stats::{LoopStats, ServerStats};
use crate::token::{TicketVerifier, TokenSigner};

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    /// A listener could not be bound.
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Token or ticket keys are unusable.
    Keys(String),
    /// A thread or doorbell could not be created.
    Io(std::io::Error),
    /// The durable queue state cannot be loaded (names the file and offset at fault).
    Recovery(RecoveryError),
    /// `[cluster]`: etcd client, link port or a cluster thread.
    Cluster(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Bind { addr, source } => write!(f, "cannot bind {addr}: {source}"),
            StartError::Keys(e) => write!(f, "keys: {e}"),
            StartError::Io(e) => write!(f, "{e}"),
            StartError::Recovery(e) => write!(f, "durability: {e}"),
            StartError::Cluster(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StartError {}

impl From<std::io::Error> for StartError {
    fn from(e: std::io::Error) -> Self {
        StartError::Io(e)
    }
}

/// A running server.
pub struct ServerHandle {
    /// Where players connect.
    pub player_addr: SocketAddr,
    /// Where the control API listens.
    pub control_addr: SocketAddr,
    /// Per-loop counters.
    pub stats: Arc<Vec<LoopStats>>,
    /// The write-ahead log's status (degraded flag, counters), when durability is on.
    pub durability: Option<Arc<DurabilityStatus>>,
    /// The cluster layer, with `[cluster]`.
    pub cluster: Option<Arc<ClusterHandle>>,
    /// Where io loops route logins, with `[cluster]` (see `cluster::routes`).
    pub routes: Option<Arc<Routes>>,
    /// The node link and router, with `[cluster]`.
    link: Option<NodeLink>,
    /// Set while draining.
    draining: Arc<AtomicBool>,
    /// Stops the control thread.
    control_stop: Arc<AtomicBool>,
    /// Into the core.
    core_tx: Sender<CoreMsg>,
    /// Each loop's event channel and bell (for the shutdown signal).
    loop_links: Vec<(Sender<LoopEvent>, Bell)>,
    /// Loop threads.
    loops: Vec<JoinHandle<()>>,
    /// Queue core thread.
    core: Option<JoinHandle<()>>,
    /// Control thread.
    control: Option<JoinHandle<()>>,
}

/// One SO_REUSEPORT listener on `addr` (non-blocking, backlog 4096).
pub fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Binds `n` (at least one) SO_REUSEPORT listeners sharing one port (the first picks
/// it when `addr` has port 0). The bench's echo server binds its listeners with it too.
pub fn reuseport_listeners(
    addr: SocketAddr,
    n: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let first = reuseport_listener(addr)?;
    let bound = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..n {
        listeners.push(reuseport_listener(bound)?);
    }
    Ok(listeners)
}

/// [`reuseport_listeners`], failing `start` with the address that could not be bound.
fn bind_listeners(addr: SocketAddr, n: usize) -> Result<Vec<std::net::TcpListener>, StartError> {
    reuseport_listeners(addr, n).map_err(|source| StartError::Bind { addr, source })
}

/// Loads the token signer and the ticket verifier, warning about development settings
/// (a generated signing key, `auth.mode = "none"`).
fn load_keys(config: &Config) -> Result<(Arc<TokenSigner>, Arc<TicketVerifier>), StartError> {
    let (signer, generated) =
        TokenSigner::from_config(&config.tokens).map_err(|e| StartError::Keys(e.to_string()))?;
    if generated && config.durability.enabled() {
        tracing::error!("durability is on but no tokens.key is configured: the generated signing key dies with the process, so after a restart the queue is recovered but every token issued before it fails verification; configure tokens.key");
    } else if generated {
        tracing::warn!("no tokens.key configured: generated a signing key; admission tokens will not survive a restart");
    }
    let tickets =
        TicketVerifier::from_config(&config.auth).map_err(|e| StartError::Keys(e.to_string()))?;
    if config.auth.mode == AuthMode::None {
        tracing::warn!("auth.mode = \"none\": any user_id is accepted (development only)");
    }
    Ok((Arc::new(signer), Arc::new(tickets)))
}

/// The queue state, recovered from `durability.dir` when set, and its write-ahead log.
fn recover_state(config: &Config) -> Result<(QueueState, Option<Durability>), StartError> {
    let queues: Vec<(String, u64, f64)> = config
        .queues
        .list
        .iter()
        .map(|q| (q.name.clone(), q.max_waiting, q.admit_rate_per_s))
        .collect();
    durability::open(
        &config.durability,
        Limits::from_config(config),
        &queues,
        crate::queue::core::unix_ms(),
    )
    .map_err(StartError::Recovery)
}

/// What every io loop shares.
struct LoopShared {
    /// Per-loop counters (all loops, indexed by loop id).
    stats: Arc<Vec<LoopStats>>,
    /// Login ticket checks.
    tickets: Arc<TicketVerifier>,
    /// Connection caps (total and per IP).
    limits: Arc<ConnLimits>,
    /// Set while draining.
    draining: Arc<AtomicBool>,
}

impl LoopShared {
    /// Counters for `loops` loops and the connection caps (bounded by the descriptor limit).
    fn new(
        config: &Config,
        loops: usize,
        tickets: Arc<TicketVerifier>,
        draining: Arc<AtomicBool>,
    ) -> LoopShared {
        LoopShared {
            stats: Arc::new(
                (0..loops)
                    .map(|_| LoopStats::new(config.queues.max_queues))
                    .collect(),
            ),
            tickets,
            limits: Arc::new(ConnLimits::new(
                connection_budget(config.server.max_connections, loops),
                config.server.max_connections_per_ip,
            )),
            draining,
        }
    }
}

/// The channels between the core and the loops, and each loop's setup.
struct LoopWiring {
    /// The core's handle on each loop.
    links: Vec<LoopLink>,
    /// Each loop's event channel and bell, kept by the handle for the shutdown signal.
    loop_links: Vec<(Sender<LoopEvent>, Bell)>,
    /// One setup per listener, ready to spawn.
    setups: Vec<LoopSetup>,
}

/// Creates each loop's event channel and doorbell and its setup, before any loop runs.
fn wire_loops(
    config: &Config,
    listeners: Vec<std::net::TcpListener>,
    core_tx: &Sender<CoreMsg>,
    shared: &LoopShared,
    placement: &Placement,
    routes: &Option<Arc<Routes>>,
) -> Result<LoopWiring, StartError> {
    let n = listeners.len();
    let mut wiring = LoopWiring {
        links: Vec::with_capacity(n),
        loop_links: Vec::with_capacity(n),
        setups: Vec::with_capacity(n),
    };
    let loop_cfg = LoopConfig::from_config(config);
    for (i, listener) in listeners.into_iter().enumerate() {
        let (tx, rx) = crossbeam_channel::bounded(config.core.loop_channel_capacity);
        let (bell, bell_rx) = doorbell::pair()?;
        wiring.loop_links.push((tx.clone(), bell.try_clone()?));
        wiring.links.push(LoopLink { tx, bell });
        wiring.setups.push(LoopSetup {
            id: i as u16,
            listener,
            events: rx,
            bell: bell_rx,
            core: core_tx.clone(),
            stats: shared.stats.clone(),
            tickets: shared.tickets.clone(),
            limits: shared.limits.clone(),
            draining: shared.draining.clone(),
            routes: routes.clone(),
            cfg: loop_cfg.clone(),
            pin: placement.pin(i),
            legacy: placement.legacy,
            fallback: placement.fallback,
        });
    }
    Ok(wiring)
}

/// The player port's `n` listeners and the address they bound.
fn bind_players(
    addr: SocketAddr,
    n: usize,
) -> Result<(Vec<std::net::TcpListener>, SocketAddr), StartError> {
    let listeners = bind_listeners(addr, n)?;
    let bound = listeners[0].local_addr()?;
    Ok((listeners, bound))
}

/// Starts every io loop thread.
fn spawn_loops(setups: Vec<io_loop::LoopSetup>) -> Result<Vec<JoinHandle<()>>, StartError> {
    let spawned: std::io::Result<Vec<_>> = setups.into_iter().map(io_loop::spawn).collect();
    Ok(spawned?)
}

/// With `[cluster]`: starts the cluster layer, the node link acceptor (links become
/// virtual loops of the core, ids from `loops` up) and the router feeding `routes`.
fn start_cluster(
    config: &Config,
    routes: &Option<Arc<Routes>>,
    core: &Sender<CoreMsg>,
    loop_links: &[(Sender<LoopEvent>, Bell)],
) -> Result<Option<NodeLink>, StartError> {
    let (Some(cluster), Some(routes)) = (&config.cluster, routes) else {
        return Ok(None);
    };
    let queues: Vec<&str> = config.queues.list.iter().map(|q| q.name.as_str()).collect();
    let mut loop_outs = Vec::with_capacity(loop_links.len());
    for (events, bell) in loop_links {
        let (events, bell) = (events.clone(), bell.try_clone()?);
        loop_outs.push(LoopOut { events, bell });
    }
    let mut cluster = cluster.clone();
    cluster.fingerprint = Some(control::cluster_fingerprint(config));
    NodeLink::start(LinkParts {
        config: &cluster,
        queues: &queues,
        routes: routes.clone(),
        core: core.clone(),
        loops: loop_links.len(),
        loop_outs,
        loop_channel_capacity: config.core.loop_channel_capacity,
        inbox_capacity: config.core.inbox_capacity,
        auto_create: config.queues.auto_create,
    })
    .map(Some)
    .map_err(|e| StartError::Cluster(e.to_string()))
}

/// Cluster mode: the core admits only while this node may (see `queue::core::fence`).
fn fence_of(link: &Option<NodeLink>) -> Option<Box<dyn AdmitFence>> {
    link.as_ref().map(ClusterFence::boxed)
}

/// Starts the control thread on `control.listen`.
fn start_control(
    config: &Config,
    ctx: ControlContext,
    stop: Arc<AtomicBool>,
) -> Result<(SocketAddr, JoinHandle<()>), StartError> {
    control::spawn(config.control.listen, ctx, stop).map_err(|source| StartError::Bind {
        addr: config.control.listen,
        source,
    })
}

/// The core's tick and resync periods from `[core]`.
fn core_timing(config: &Config) -> CoreTiming {
    CoreTiming {
        tick: Duration::from_millis(config.core.tick_ms),
        resync: Duration::from_secs(config.core.resync_secs),
    }
}

/// Starts the queue core on its own (pinned) thread.
fn spawn_core(core: Core, pin: Option<core_affinity::CoreId>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("queue-core".into())
        .spawn(move || {
            if let Some(c) = pin {
                core_affinity::set_for_current(c);
            }
            // The core owns every queue: if it dies, no login or admission can be
            // answered any more. Crash loudly so a supervisor restarts the server.
            let run = std::panic::AssertUnwindSafe(|| core.run());
            if std::panic::catch_unwind(run).is_err() {
                tracing::error!("queue core panicked: aborting the process");
                std::process::abort();
            }
        })
}

/// The one line saying the server is up, and where.
fn log_listening(player: SocketAddr, control: SocketAddr, loops: usize, legacy: bool) {
    tracing::info!(
        player = %player,
        control = %control,
        loops,
        driver = if legacy { "legacy (epoll)" } else { "io_uring" },
        "queue-server listening"
    );
}

impl ServerHandle {
    /// Starts everything; returns once all listeners are bound and threads running.
    /// Steps: keys, queue state (a recovery error fails with nothing bound or running),
    /// listeners and placement, loop wiring, control, core, loops.
    pub fn start(config: &Config) -> Result<ServerHandle, StartError> {
        let (signer, tickets) = load_keys(config)?;
        let (state, wal) = recover_state(config)?;
        let durability = wal.as_ref().map(|w| w.status());

        let n = config.loop_count();
        let (listeners, player_addr) = bind_players(config.server.listen, n)?;
        let placement = Placement::detect(config, n);

        let draining = Arc::new(AtomicBool::new(false));
        let shared = LoopShared::new(config, n, tickets, draining.clone());
        let stats = shared.stats.clone();
        let server_stats = Arc::new(ServerStats::default());
        let (core_tx, core_rx) = crossbeam_channel::bounded(config.core.inbox_capacity);
        let routes = Routes::for_cluster(&config.cluster, &config.tokens.key);
        let wiring = wire_loops(config, listeners, &core_tx, &shared, &placement, &routes)?;
        let link = start_cluster(config, &routes, &core_tx, &wiring.loop_links)?;

        let cluster_control = link.as_ref().map(ClusterControl::new);
        let control_stop = Arc::new(AtomicBool::new(false));
        let core_round_ms = Arc::new(AtomicU64::new(crate::queue::core::unix_ms()));
        let ctx = ControlContext {
            core: core_tx.clone(),
            signer: signer.clone(),
            loops: stats.clone(),
            draining: draining.clone(),
            durability: durability.clone(),
            api_key: config.control.api_key.clone(),
            core_round_ms: core_round_ms.clone(),
            server_stats: server_stats.clone(),
            cluster: cluster_control,
        };
        let (control_addr, control) = start_control(config, ctx, control_stop.clone())?;

        let core = Core::new(
            state,
            signer,
            core_rx,
            wiring.links,
            core_timing(config),
            draining.clone(),
        )
        .with_durability(wal)
        .with_journal(crate::queue::journal::Journal::from_config(&config.journal))
        .with_round_clock(core_round_ms)
        .with_fence(fence_of(&link))
        .with_stats(server_stats, stats.clone());
        let core = spawn_core(core, placement.pin(n))?;

        let loops = spawn_loops(wiring.setups)?;
        log_listening(player_addr, control_addr, n, placement.legacy);
        Ok(ServerHandle {
            player_addr,
            control_addr,
            stats,
            durability,
            cluster: link.as_ref().map(|l| l.cluster.clone()),
            routes,
            link,
            draining,
            control_stop,
            core_tx,
            loop_links: wiring.loop_links,
            loops,
            core: Some(core),
            control: Some(control),
        })
    }

    /// Starts draining without stopping: `/healthz` answers 503 and new logins get
    /// SHUTTING_DOWN. [`ServerHandle::shutdown`] finishes the stop.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Test hook: closes the node links other nodes opened to this one (a cut).
    #[doc(hidden)]
    pub fn close_node_links_for_test(&self) {
        if let Some(link) = &self.link {
            link.close_links_for_test();
        }
    }

    /// Test hook: the cluster side dies as with `kill -9` (`NodeLink::kill_for_test`).
    #[doc(hidden)]
    pub fn kill_node_for_test(&mut self) {
        self.link.iter_mut().for_each(NodeLink::kill_for_test);
    }

    /// True while draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Drains and stops everything; returns when all threads have ended.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.draining.store(true, Ordering::SeqCst);
        for (tx, bell) in &self.loop_links {
            let _ = tx.send(LoopEvent::Shutdown);
            bell.ring();
        }
        for handle in self.loops.drain(..) {
            let _ = handle.join();
        }
        if let Some(mut link) = self.link.take() {
            link.stop();
        }
        let _ = self.core_tx.send(CoreMsg::Shutdown);
        if let Some(core) = self.core.take() {
            let _ = core.join();
        }
        self.control_stop.store(true, Ordering::SeqCst);
        if let Some(control) = self.control.take() {
            let _ = control.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if self.core.is_some() {
            self.stop();
        }
    }
}
