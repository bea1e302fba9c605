//! The command line: `queue-client join | swarm | ctl` and `queuectl` (the `ctl`
//! subcommands directly). Flags, exit codes and dispatch; the work is in [`join`],
//! [`swarm`] and [`ctl`].
//!
//! Owns: the exit codes (documented in `--help` and the crate docs); one tokio
//! runtime per process, built here.

pub mod ctl;
pub mod join;
pub mod swarm;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Exit codes of the command line.
pub mod exit {
    /// Admitted (join), all admitted (swarm), done (ctl).
    pub const OK: u8 = 0;
    /// Any other failure; for `queuectl`, the server answered an HTTP error.
    pub const FAILURE: u8 = 1;
    /// The server refused the login (an error code); `queuectl verify`: token not valid.
    pub const REFUSED: u8 = 3;
    /// Kicked for good (`duplicate_login`, `removed`).
    pub const KICKED: u8 = 4;
    /// Gave up: the server (or control port) could not be reached, or reconnecting failed.
    pub const GAVE_UP: u8 = 5;
    /// Interrupted (Ctrl-C); `leave` was sent.
    pub const INTERRUPTED: u8 = 130;
}

/// Shown under `--help` of `queue-client`.
const CLIENT_EXIT_CODES: &str = "\
Exit codes (join; swarm reports its worst player):
  0    admitted: the token was printed (swarm: every player admitted)
  1    other failure
  2    usage error
  3    refused: the server answered login with an error code (bad ticket, queue full, unknown queue, ...)
  4    kicked for good: duplicate_login (another connection took the place) or removed
  5    gave up: the server could not be reached, or reconnecting failed too many times
  130  interrupted (Ctrl-C): leave was sent

queuectl / queue-client ctl:
  0 ok, 1 the server answered an HTTP error (its message is printed), 2 usage,
  3 verify: token not valid, 5 the control port could not be reached";

/// Shown under `--help` of `queuectl`.
const CTL_EXIT_CODES: &str = "\
Exit codes:
  0  ok
  1  the server answered an HTTP error (its {\"error\"} message is printed)
  2  usage error
  3  verify: the token is not valid
  5  the control port could not be reached (or did not answer in time)

The API key comes from --api-key or the QUEUE_API_KEY environment variable.";

/// Player-side client and operator tool for queue-server.
#[derive(Parser, Debug)]
#[command(name = "queue-client", version, about = "Player client (join, swarm) and operator tool (ctl) for queue-server", after_help = CLIENT_EXIT_CODES)]
pub struct ClientArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ClientCommand,
}

/// `queue-client` subcommands.
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Join a queue as one player: a live bar until admitted, then print the token.
    #[command(after_help = CLIENT_EXIT_CODES)]
    Join(JoinArgs),
    /// Join N players at once and show how many wait, reconnect and are admitted.
    #[command(after_help = CLIENT_EXIT_CODES)]
    Swarm(SwarmArgs),
    /// Operator commands against the control port (also installed as `queuectl`).
    #[command(after_help = CTL_EXIT_CODES)]
    Ctl(CtlArgs),
}

/// Connection settings shared by `join` and `swarm`.
#[derive(Args, Debug, Clone)]
pub struct PlayerOpts {
    /// Player port of the server.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub addr: String,
    /// Queue to join.
    #[arg(long, default_value = "default")]
    pub queue: String,
    /// Login ticket (a JWT from the game's account service) when the server checks tickets.
    #[arg(long)]
    pub ticket: Option<String>,
    /// Heartbeat period in milliseconds (the protocol asks for 10 s).
    #[arg(long, default_value_t = 10_000)]
    pub heartbeat_ms: u64,
    /// Most milliseconds any request waits for its answer before the server is taken for dead.
    #[arg(long, default_value_t = 10_000)]
    pub answer_timeout_ms: u64,
    /// Reconnect attempts in a row before giving up.
    #[arg(long, default_value_t = 10)]
    pub max_attempts: u32,
}

impl PlayerOpts {
    /// A client builder for `user`.
    pub fn builder(&self, user: u64) -> crate::ClientBuilder {
        let mut b = crate::Client::builder(self.addr.clone())
            .user(user)
            .queue(self.queue.clone())
            .heartbeat_interval(Duration::from_millis(self.heartbeat_ms.max(1)))
            .answer_timeout(Duration::from_millis(self.answer_timeout_ms.max(1)))
            .max_reconnect_attempts(self.max_attempts);
        if let Some(t) = &self.ticket {
            b = b.ticket(t.clone());
        }
        b
    }
}

/// `queue-client join`.
#[derive(Args, Debug)]
pub struct JoinArgs {
    /// The player's user id.
    #[arg(long)]
    pub user: u64,
    /// Connection settings.
    #[command(flatten)]
    pub player: PlayerOpts,
    /// One JSON line per event on stdout instead of the bar (for scripts).
    #[arg(long)]
    pub json: bool,
}

/// `queue-client swarm`.
#[derive(Args, Debug)]
pub struct SwarmArgs {
    /// How many players join.
    #[arg(long)]
    pub users: u32,
    /// User id of the first player; the others follow (base, base + 1, ...).
    #[arg(long, default_value_t = 1_000_000)]
    pub user_base: u64,
    /// Connection settings.
    #[command(flatten)]
    pub player: PlayerOpts,
    /// One JSON summary line per second (and a last one) instead of the bar.
    #[arg(long)]
    pub json: bool,
}

/// Control port settings and the command.
#[derive(Args, Debug)]
pub struct CtlArgs {
    /// Control port base URL.
    #[arg(long, global = true, default_value = "http://127.0.0.1:7001")]
    pub url: String,
    /// Bearer key of the control port (`control.api_key`).
    #[arg(long, global = true, env = "QUEUE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Print the server's JSON answer (one line) instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// The command.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// Operator commands.
#[derive(Subcommand, Debug)]
pub enum CtlCommand {
    /// Per-queue counters, connections and cores (GET /v1/stats).
    Stats,
    /// Admit up to N players from the head of the queue and print their tokens.
    Admit {
        /// How many.
        count: u64,
        /// The queue.
        #[arg(long, default_value = "default")]
        queue: String,
    },
    /// Admit automatically at R players per second (0 = manual only).
    Rate {
        /// Players per second.
        #[arg(allow_negative_numbers = true)]
        per_second: f64,
        /// The queue.
        #[arg(long, default_value = "default")]
        queue: String,
    },
    /// Report the login servers' load: ONLINE players of CAPACITY.
    Capacity {
        /// Players online now.
        online: u64,
        /// Players the login servers can hold.
        capacity: u64,
        /// The queue.
        #[arg(long, default_value = "default")]
        queue: String,
    },
    /// Stop automatic admission.
    Pause {
        /// The queue.
        #[arg(long, default_value = "default")]
        queue: String,
    },
    /// Restart automatic admission.
    Resume {
        /// The queue.
        #[arg(long, default_value = "default")]
        queue: String,
    },
    /// Verify (and consume) an admission token.
    Verify {
        /// The token.
        token: String,
    },
    /// The public keys that verify admission tokens (JWKS).
    Keys,
}

/// `queuectl`: the `ctl` subcommands directly.
#[derive(Parser, Debug)]
#[command(name = "queuectl", version, about = "Operator tool for queue-server's control port", after_help = CTL_EXIT_CODES)]
pub struct QueuectlArgs {
    /// Settings and command.
    #[command(flatten)]
    pub ctl: CtlArgs,
}

/// A runtime for the command line: current-thread for `join` and `ctl`; `swarm` gets
/// the multi-thread one (many connections).
fn runtime(multi: bool) -> std::io::Result<tokio::runtime::Runtime> {
    if multi {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
}

/// `main` of `queue-client`.
pub fn main_client() -> ExitCode {
    let args = ClientArgs::parse();
    let multi = matches!(args.command, ClientCommand::Swarm(_));
    let rt = match runtime(multi) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("queue-client: cannot start the runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let code = rt.block_on(async move {
        match args.command {
            ClientCommand::Join(a) => join::run(a).await,
            ClientCommand::Swarm(a) => swarm::run(a).await,
            ClientCommand::Ctl(a) => ctl::run(a).await,
        }
    });
    ExitCode::from(code)
}

/// `main` of `queuectl`.
pub fn main_ctl() -> ExitCode {
    let args = QueuectlArgs::parse();
    let rt = match runtime(false) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("queuectl: cannot start the runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    ExitCode::from(rt.block_on(ctl::run(args.ctl)))
}

/// The exit code for an error that stopped a player.
pub fn exit_code(e: &crate::Error) -> u8 {
    match e {
        crate::Error::Kicked { .. } => exit::KICKED,
        e if e.is_refusal() => exit::REFUSED,
        crate::Error::Config(_) => exit::FAILURE,
        _ => exit::GAVE_UP,
    }
}

/// `1m05s`, `12s`, `1h02m`.
pub fn human_secs(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}
