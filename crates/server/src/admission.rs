//! Admission against the ledger's declared capacity: before a batch is proposed, every write
//! request in it must fit beside what the ledger holds and what was admitted but not yet
//! applied; one that could pass a limit is refused, naming it, and changes nothing.
//!
//! Owns the count of admitted-but-unapplied objects. It must not touch the ledger's state or
//! decide anything `apply` decides: it only keeps a conservative bound (every create event is
//! counted as one new object), so a node never proposes a batch that could grow the ledger
//! past its capacity, and never panics or runs out of memory in `apply` instead.

use std::sync::{Arc, Mutex};

use ledger::{Capacity, CapacityError, Occupancy};

/// The capacity of one node and what is admitted against it. Shared with the reservations.
#[derive(Debug)]
pub(crate) struct Admission {
    capacity: Capacity,
    /// Objects admitted and not yet applied (their reservations are alive).
    admitted: Mutex<Occupancy>,
}

/// Objects admitted for a batch in flight; released when dropped (after the batch was applied
/// here, or failed), when the ledger's own counts include what it added.
#[derive(Debug)]
pub(crate) struct Reservation {
    admission: Arc<Admission>,
    occupancy: Occupancy,
}

impl Admission {
    pub(crate) fn new(capacity: Capacity) -> Arc<Admission> {
        Arc::new(Admission {
            capacity,
            admitted: Mutex::new(Occupancy::default()),
        })
    }

    /// Admits a request that could add `requested` objects to a ledger holding `held`, or
    /// names the limit it could pass.
    pub(crate) fn reserve(
        self: &Arc<Self>,
        held: Occupancy,
        requested: Occupancy,
    ) -> Result<Reservation, CapacityError> {
        let mut admitted = self.admitted.lock().expect("never poisoned");
        self.capacity.admit(held.plus(*admitted), requested)?;
        *admitted = admitted.plus(requested);
        Ok(Reservation {
            admission: Arc::clone(self),
            occupancy: requested,
        })
    }
}

impl Reservation {
    /// One reservation for two requests of the same batch.
    pub(crate) fn absorb(&mut self, other: Reservation) {
        debug_assert!(Arc::ptr_eq(&self.admission, &other.admission));
        self.occupancy = self.occupancy.plus(other.occupancy);
        let mut other = other;
        other.occupancy = Occupancy::default();
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut admitted = self.admission.admitted.lock().expect("never poisoned");
        debug_assert!(
            admitted.accounts >= self.occupancy.accounts
                && admitted.transfers >= self.occupancy.transfers
        );
        *admitted = admitted.minus(self.occupancy);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPACITY: Capacity = Capacity {
        accounts_max: 10,
        transfers_max: 5,
    };

    fn transfers(n: u64) -> Occupancy {
        Occupancy {
            accounts: 0,
            transfers: n,
        }
    }

    #[test]
    fn admitted_but_unapplied_requests_count_until_their_reservation_is_dropped() {
        let admission = Admission::new(CAPACITY);
        let first = admission.reserve(transfers(1), transfers(3)).unwrap();
        let refused = admission.reserve(transfers(1), transfers(2)).unwrap_err();
        assert_eq!(
            (refused.field, refused.max, refused.taken),
            ("transfers_max", 5, 4)
        );
        drop(first);
        assert!(admission.reserve(transfers(1), transfers(4)).is_ok());
    }

    #[test]
    fn an_absorbed_reservation_is_released_once_with_the_one_that_absorbed_it() {
        let admission = Admission::new(CAPACITY);
        let mut batch = admission.reserve(transfers(0), transfers(2)).unwrap();
        batch.absorb(admission.reserve(transfers(0), transfers(3)).unwrap());
        assert!(admission.reserve(transfers(0), transfers(1)).is_err());
        drop(batch);
        assert_eq!(*admission.admitted.lock().unwrap(), Occupancy::default());
    }
}
