//! A loop's session table: slots addressed by [`SessionId`] (index in the low 32 bits,
//! the slot's generation in the high 32), so an event for a closed session never
//! reaches its slot's next user.
//!
//! Invariants: `live` counts the occupied slots; a freed slot's index is reused, its
//! generation bumped; iteration re-borrows per slot, so the callback may touch the
//! table (a kick may close a session).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::msg::SessionId;
use crate::session::Session;

/// A slot of the table.
struct Slot {
    /// Bumped each time the slot is reused.
    generation: u32,
    /// The session living here, if any.
    session: Option<Rc<Session>>,
}

/// The table.
#[derive(Default)]
pub struct SessionTable {
    /// Slots, by index.
    slots: RefCell<Vec<Slot>>,
    /// Free slot indexes.
    free: RefCell<Vec<u32>>,
    /// Occupied slots.
    live: Cell<usize>,
}

impl SessionTable {
    /// Live sessions.
    pub fn live(&self) -> usize {
        self.live.get()
    }

    /// Registers a session built by `make` with its new id; `None` when the table
    /// cannot grow.
    pub fn insert(&self, make: impl FnOnce(SessionId) -> Session) -> Option<Rc<Session>> {
        let mut slots = self.slots.borrow_mut();
        let index = match self.free.borrow_mut().pop() {
            Some(i) => i,
            None => {
                if slots.len() >= u32::MAX as usize {
                    return None;
                }
                slots.push(Slot {
                    generation: 0,
                    session: None,
                });
                (slots.len() - 1) as u32
            }
        };
        let slot = &mut slots[index as usize];
        slot.generation = slot.generation.wrapping_add(1);
        let id = (u64::from(slot.generation) << 32) | u64::from(index);
        let session = Rc::new(make(id));
        slot.session = Some(session.clone());
        self.live.set(self.live.get() + 1);
        Some(session)
    }

    /// The live session with this id, if any.
    pub fn get(&self, id: SessionId) -> Option<Rc<Session>> {
        let index = (id & 0xffff_ffff) as usize;
        let slots = self.slots.borrow();
        let slot = slots.get(index)?;
        if u64::from(slot.generation) != id >> 32 {
            return None;
        }
        slot.session.clone()
    }

    /// Drops a session from its slot; false when it was not there (already removed).
    pub fn remove(&self, session: &Session) -> bool {
        let index = (session.id() & 0xffff_ffff) as u32;
        let mut slots = self.slots.borrow_mut();
        let Some(slot) = slots.get_mut(index as usize) else {
            return false;
        };
        if slot.session.as_ref().map(|s| s.id()) != Some(session.id()) {
            return false;
        }
        slot.session = None;
        self.free.borrow_mut().push(index);
        self.live.set(self.live.get() - 1);
        true
    }

    /// Calls `f` for every live session.
    pub fn for_each(&self, mut f: impl FnMut(&Rc<Session>)) {
        // Collecting would allocate; iterate by index and re-borrow per slot so `f` may
        // touch the table.
        let n = self.slots.borrow().len();
        for i in 0..n {
            let session = self.slots.borrow().get(i).and_then(|s| s.session.clone());
            if let Some(session) = session {
                f(&session);
            }
        }
    }
}
