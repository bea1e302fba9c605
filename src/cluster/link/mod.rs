//! The node link: how players connected to any node wait in one queue held by its
//! owner's core. A remote node is one more loop of the owner's core (a *virtual loop*);
//! the link carries the messages loops and core already exchange (`msg.rs`), batched
//! per round in both directions, in the binary frames of [`codec`].

pub mod codec;
pub mod owner;
