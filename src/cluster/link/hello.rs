//! The handshake after the preamble exchange (see `codec`): the edge names itself so the
//! owner can label the link's counters (`stats`) with the peer's node id, and the owner
//! answers with its *incarnation*, a random u64 drawn once per process
//! (`ClusterHandle::incarnation`). The edge remembers it: when a re-dial of the same
//! address finds another incarnation, the owner process it served died and another
//! one answers there (a restart, `kill -9` then a supervisor), so the places behind the
//! link are not in that process's grace: they are re-submitted to whoever owns each
//! queue now (`edge::relay`), never kicked to resume from a grace nobody has.
//!
//! ```text
//! hello       := len:u8 node_id[len]      (edge -> owner, once, after both preambles)
//! incarnation := u64 (little-endian)      (owner -> edge, once, after the hello)
//! ```

use std::io::{self, Read, Write};

/// Writes the hello for `node_id` (cut to 255 bytes: node ids have at most 64).
pub fn write_hello(w: &mut impl Write, node_id: &str) -> io::Result<()> {
    let id = node_id.as_bytes();
    let id = &id[..id.len().min(u8::MAX as usize)];
    let mut out = Vec::with_capacity(1 + id.len());
    out.push(id.len() as u8);
    out.extend_from_slice(id);
    w.write_all(&out)
}

/// Reads a hello: the peer's node id (invalid UTF-8 replaced; the stats check it).
pub fn read_hello(r: &mut impl Read) -> io::Result<String> {
    let mut len = [0u8; 1];
    r.read_exact(&mut len)?;
    let mut id = vec![0u8; len[0] as usize];
    r.read_exact(&mut id)?;
    Ok(String::from_utf8_lossy(&id).into_owned())
}

/// Writes the owner's incarnation (its answer to the hello).
pub fn write_incarnation(w: &mut impl Write, incarnation: u64) -> io::Result<()> {
    w.write_all(&incarnation.to_le_bytes())
}

/// Reads the owner's incarnation.
pub fn read_incarnation(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_round_trips_and_a_short_one_fails() {
        let mut buf = Vec::new();
        write_hello(&mut buf, "eu-1").unwrap();
        assert_eq!(buf, b"\x04eu-1");
        assert_eq!(read_hello(&mut &buf[..]).unwrap(), "eu-1");
        assert!(read_hello(&mut &buf[..3]).is_err());
    }

    #[test]
    fn an_incarnation_round_trips_and_a_short_one_fails() {
        let mut buf = Vec::new();
        write_incarnation(&mut buf, 0x0102_0304_0506_0708).unwrap();
        assert_eq!(
            read_incarnation(&mut &buf[..]).unwrap(),
            0x0102_0304_0506_0708
        );
        assert!(read_incarnation(&mut &buf[..7]).is_err());
    }
}
