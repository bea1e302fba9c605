//! Control request bodies: bounded parsing and range checks of every number, before
//! anything reaches the core. [`parse_body`] is public so the fuzz target
//! (`scripts/fuzz/fuzz_targets/control_body.rs`) drives exactly what the port runs.
//!
//! Invariants:
//! - a body is at most [`BODY_BYTES_MAX`] bytes (the caller refuses more with 413; this
//!   module checks again) and nested at most [`JSON_DEPTH_MAX`] levels, checked by
//!   [`crate::protocol::depth_within`] *before* the recursive JSON parser runs, so no
//!   body can overflow the control thread's stack;
//! - a body is one JSON object; unknown fields are ignored;
//! - every number is checked against its documented range, and an error names the
//!   field: `count` in 0..=[`ADMIT_MAX`], `per_second` finite in 0..=[`RATE_MAX_PER_S`],
//!   `online` and `capacity` in 0..=[`CAPACITY_MAX`]; an `Ok` holds only values in range.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use sonic_rs::{JsonNumberTrait, Number};

use crate::queue::core::ADMIT_MAX;
use crate::queue::pacing::{CAPACITY_MAX, RATE_MAX_PER_S};

/// Largest request body read, bytes (413 past it).
pub const BODY_BYTES_MAX: usize = 64 * 1024;
/// Deepest nesting of objects/arrays accepted in a body (as on the player port).
pub const JSON_DEPTH_MAX: u32 = crate::protocol::MAX_JSON_DEPTH;

/// Which body a route takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `POST /v1/queues/{q}/admit`: `{"count": n}`.
    Admit,
    /// `PUT /v1/queues/{q}/rate`: `{"per_second": r}`.
    Rate,
    /// `PUT /v1/queues/{q}/capacity`: `{"online": a, "capacity": b}`.
    Capacity,
    /// `POST /v1/tokens/verify`: `{"token": "..."}`.
    Verify,
}

/// A parsed, range-checked control body.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlBody {
    /// Admit up to `count` players (0..=[`ADMIT_MAX`]; 0 admits nobody).
    Admit {
        /// Most players to admit.
        count: u64,
    },
    /// Automatic admission rate, players/s (finite, 0..=[`RATE_MAX_PER_S`]).
    Rate {
        /// Players per second; 0 = manual only.
        per_second: f64,
    },
    /// The login server's load report (each 0..=[`CAPACITY_MAX`]).
    Capacity {
        /// Players the login server has online.
        online: u64,
        /// Players it can hold.
        capacity: u64,
    },
    /// A token to verify.
    Verify {
        /// The compact JWS.
        token: String,
    },
}

/// Why a body was refused; [`BodyError::status`] is the HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Longer than [`BODY_BYTES_MAX`].
    TooLarge,
    /// Nested deeper than [`JSON_DEPTH_MAX`].
    TooDeep,
    /// Not a JSON object at the top.
    NotObject,
    /// Not JSON, or a field missing or of the wrong type (the parser's words).
    Invalid(String),
    /// A number outside its range.
    OutOfRange {
        /// The field's name.
        field: &'static str,
        /// The accepted values, in words.
        range: &'static str,
    },
}

impl BodyError {
    /// 413 for a body too large, 400 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            BodyError::TooLarge => 413,
            _ => 400,
        }
    }
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::TooLarge => write!(f, "request body over {BODY_BYTES_MAX} bytes"),
            BodyError::TooDeep => write!(f, "JSON nested deeper than {JSON_DEPTH_MAX} levels"),
            BodyError::NotObject => f.write_str("invalid JSON body: not an object"),
            BodyError::Invalid(e) => write!(f, "invalid JSON body: {e}"),
            BodyError::OutOfRange { field, range } => write!(f, "{field} must be {range}"),
        }
    }
}

impl std::error::Error for BodyError {}

/// `count`'s range, in words.
const COUNT_RANGE: &str = "an integer between 0 and 100000";
/// `per_second`'s range, in words.
const RATE_RANGE: &str = "a finite number between 0 and 1000000";
/// `online`'s and `capacity`'s range, in words.
const CAPACITY_RANGE: &str = "an integer between 0 and 1000000000";

/// `POST .../admit` body, numbers still unchecked.
#[derive(Deserialize)]
struct AdmitIn {
    /// Most players to admit.
    count: Number,
}

/// `PUT .../rate` body, numbers still unchecked.
#[derive(Deserialize)]
struct RateIn {
    /// Players per second.
    per_second: Number,
}

/// `PUT .../capacity` body, numbers still unchecked.
#[derive(Deserialize)]
struct CapacityIn {
    /// Players online.
    online: Number,
    /// Players the login server can hold.
    capacity: Number,
}

/// `POST /v1/tokens/verify` body.
#[derive(Deserialize)]
struct VerifyIn {
    /// The compact JWS.
    token: String,
}

/// Parses and checks a body for `kind`.
pub fn parse_body(kind: BodyKind, body: &[u8]) -> Result<ControlBody, BodyError> {
    Ok(match kind {
        BodyKind::Admit => {
            let AdmitIn { count } = parse_object(body)?;
            ControlBody::Admit {
                count: integer(&count, "count", ADMIT_MAX, COUNT_RANGE)?,
            }
        }
        BodyKind::Rate => {
            let RateIn { per_second } = parse_object(body)?;
            let out_of_range = BodyError::OutOfRange {
                field: "per_second",
                range: RATE_RANGE,
            };
            let r = per_second.as_f64().ok_or_else(|| out_of_range.clone())?;
            if !(r.is_finite() && (0.0..=RATE_MAX_PER_S).contains(&r)) {
                return Err(out_of_range);
            }
            // -0 is 0: the core sees a plain zero.
            ControlBody::Rate {
                per_second: r.max(0.0),
            }
        }
        BodyKind::Capacity => {
            let CapacityIn { online, capacity } = parse_object(body)?;
            ControlBody::Capacity {
                online: integer(&online, "online", CAPACITY_MAX, CAPACITY_RANGE)?,
                capacity: integer(&capacity, "capacity", CAPACITY_MAX, CAPACITY_RANGE)?,
            }
        }
        BodyKind::Verify => {
            let VerifyIn { token } = parse_object(body)?;
            ControlBody::Verify { token }
        }
    })
}

/// `n` as an integer in `0..=max`, or an error naming `field`.
fn integer(
    n: &Number,
    field: &'static str,
    max: u64,
    range: &'static str,
) -> Result<u64, BodyError> {
    n.as_u64()
        .filter(|v| *v <= max)
        .ok_or(BodyError::OutOfRange { field, range })
}

/// Size, depth and top-level shape checks, then the JSON parse.
fn parse_object<T: DeserializeOwned>(body: &[u8]) -> Result<T, BodyError> {
    if body.len() > BODY_BYTES_MAX {
        return Err(BodyError::TooLarge);
    }
    if !crate::protocol::depth_within(body, JSON_DEPTH_MAX) {
        return Err(BodyError::TooDeep);
    }
    // serde would also take a struct from an array (`[1]`); the API speaks objects only.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(BodyError::NotObject);
    }
    sonic_rs::from_slice(body).map_err(|e| BodyError::Invalid(e.to_string()))
}
