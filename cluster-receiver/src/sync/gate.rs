//! Admission of connections, so that clients without a token cannot lock
//! the paired laptops out.
//!
//! Only authenticated connections count against the receiver's connection
//! limit ([`Gate::new`]'s `max_authenticated`): a connection takes a
//! [`Slot`] once its `Hello` carried a valid token. Before that it is
//! *pending* ([`Admission`]), and pending connections are bounded apart:
//! each has [`PENDING_DEADLINE`] to complete its handshake and `Hello`, and
//! when a source address already has [`PER_SOURCE`] pending connections (or
//! the receiver [`PENDING_MAX`]), the oldest of them is evicted to make room
//! for the new one. A new connection is never refused for want of room, so
//! a laptop behind a flooding address still gets in, unless the flood opens
//! [`PER_SOURCE`] connections in the moment it takes the laptop to say
//! `Hello`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Time from accepting a connection to its authenticated `Hello`.
pub const PENDING_DEADLINE: Duration = Duration::from_secs(10);
/// Pending connections per source address, at most.
pub const PER_SOURCE: usize = 64;
/// Pending connections in all, at most.
pub const PENDING_MAX: usize = 1024;

/// The receiver's admission state (see the module documentation).
pub struct Gate {
    authenticated: Arc<Semaphore>,
    max_authenticated: usize,
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    next: u64,
    /// Every pending connection by arrival (oldest first).
    all: BTreeMap<u64, (IpAddr, CancellationToken)>,
    /// Pending connections of each source, oldest first.
    by_source: HashMap<IpAddr, VecDeque<u64>>,
}

impl Pending {
    fn remove(&mut self, id: u64) -> Option<CancellationToken> {
        let (ip, token) = self.all.remove(&id)?;
        if let Some(q) = self.by_source.get_mut(&ip) {
            q.retain(|&i| i != id);
            if q.is_empty() {
                self.by_source.remove(&ip);
            }
        }
        Some(token)
    }
}

/// A pending connection: evicted (or past its deadline) when
/// [`Admission::expired`] resolves; [`Admission::authenticate`] turns it
/// into a [`Slot`]. Dropping it leaves the pending set.
pub struct Admission {
    gate: Arc<Gate>,
    id: u64,
    evicted: CancellationToken,
    deadline: tokio::time::Instant,
}

/// An authenticated connection's share of the connection limit.
pub struct Slot(#[allow(dead_code)] OwnedSemaphorePermit);

/// Every authenticated slot is taken.
#[derive(Debug, thiserror::Error)]
#[error(
    "the receiver already serves its maximum of {0} laptop connections; try again later, or raise `devd-receiver serve --max-connections`"
)]
pub struct Busy(pub usize);

impl Gate {
    /// A gate letting at most `max_authenticated` authenticated
    /// connections in at a time.
    pub fn new(max_authenticated: usize) -> Arc<Self> {
        let max = max_authenticated.max(1);
        Arc::new(Self {
            authenticated: Arc::new(Semaphore::new(max)),
            max_authenticated: max,
            pending: Mutex::default(),
        })
    }

    /// Admit a new connection from `remote` as pending, evicting the oldest
    /// pending one of its source (or of all) when there is no room.
    pub fn admit(self: &Arc<Self>, remote: SocketAddr) -> Admission {
        let ip = remote.ip();
        let evicted = CancellationToken::new();
        let mut p = self.pending.lock().expect("gate lock");
        let id = p.next;
        p.next += 1;
        let full_source = p.by_source.get(&ip).is_some_and(|q| q.len() >= PER_SOURCE);
        let oldest = if full_source {
            p.by_source.get(&ip).and_then(|q| q.front().copied())
        } else if p.all.len() >= PENDING_MAX {
            p.all.keys().next().copied()
        } else {
            None
        };
        if let Some(old) = oldest
            && let Some(token) = p.remove(old)
        {
            tracing::debug!(%remote, "too many unauthenticated connections; closing the oldest");
            token.cancel();
        }
        p.all.insert(id, (ip, evicted.clone()));
        p.by_source.entry(ip).or_default().push_back(id);
        Admission {
            gate: self.clone(),
            id,
            evicted,
            deadline: tokio::time::Instant::now() + PENDING_DEADLINE,
        }
    }

    /// Pending connections now.
    pub fn pending(&self) -> usize {
        self.pending.lock().expect("gate lock").all.len()
    }

    /// Authenticated connections now.
    pub fn authenticated(&self) -> usize {
        self.max_authenticated - self.authenticated.available_permits()
    }
}

/// When a pending connection must go, apart from the [`Admission`] (which
/// the authentication consumes).
#[derive(Clone)]
pub struct Expiry {
    evicted: CancellationToken,
    deadline: tokio::time::Instant,
}

impl Expiry {
    /// Resolves when the connection was evicted or its deadline passed.
    pub async fn expired(&self) {
        tokio::select! {
            _ = self.evicted.cancelled() => {}
            _ = tokio::time::sleep_until(self.deadline) => {}
        }
    }
}

impl Admission {
    /// Resolves when this connection was evicted or its deadline passed:
    /// close it.
    pub async fn expired(&self) {
        self.expiry().expired().await
    }

    /// The same as [`Admission::expired`], detached from the admission.
    pub fn expiry(&self) -> Expiry {
        Expiry {
            evicted: self.evicted.clone(),
            deadline: self.deadline,
        }
    }

    /// The connection authenticated: leave the pending set and take a slot.
    pub fn authenticate(self) -> Result<Slot, Busy> {
        let gate = self.gate.clone();
        drop(self);
        gate.authenticated
            .clone()
            .try_acquire_owned()
            .map(Slot)
            .map_err(|_| Busy(gate.max_authenticated))
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.gate.pending.lock().expect("gate lock").remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(ip: &str, port: u16) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), port)
    }

    async fn is_expired(a: &Admission) -> bool {
        tokio::time::timeout(Duration::from_millis(1), a.expired())
            .await
            .is_ok()
    }

    /// Pending connections take no authenticated slot, however many.
    #[tokio::test]
    async fn pending_connections_do_not_take_authenticated_slots() {
        let gate = Gate::new(2);
        let flood: Vec<_> = (0..200)
            .map(|i| gate.admit(addr("10.0.0.1", 1000 + i)))
            .collect();
        assert_eq!(gate.pending(), PER_SOURCE.min(200));
        let laptop = gate.admit(addr("10.0.0.1", 40000));
        let slot = laptop.authenticate().expect("a slot for the laptop");
        assert_eq!(gate.authenticated(), 1);
        let second = gate.admit(addr("10.0.0.2", 1)).authenticate().unwrap();
        let third = gate.admit(addr("10.0.0.3", 1)).authenticate();
        assert!(matches!(third, Err(Busy(2))), "two slots, both taken");
        drop((slot, second, flood));
        assert_eq!(gate.authenticated(), 0);
        assert_eq!(gate.pending(), 0);
    }

    /// A source over its budget loses its oldest pending connection, not
    /// the newest, and other sources keep theirs.
    #[tokio::test]
    async fn the_oldest_pending_of_a_full_source_is_evicted() {
        let gate = Gate::new(8);
        let other = gate.admit(addr("10.0.0.9", 1));
        let first: Vec<_> = (0..PER_SOURCE as u16)
            .map(|i| gate.admit(addr("10.0.0.1", i)))
            .collect();
        for a in &first {
            assert!(!is_expired(a).await);
        }
        let newest = gate.admit(addr("10.0.0.1", 9999));
        assert!(is_expired(&first[0]).await, "the oldest was evicted");
        assert!(!is_expired(&first[1]).await);
        assert!(!is_expired(&newest).await, "the newest got in");
        assert!(!is_expired(&other).await, "another source is untouched");
        assert_eq!(gate.pending(), PER_SOURCE + 1);
    }

    /// The receiver-wide bound evicts the oldest pending connection of all.
    #[tokio::test]
    async fn the_oldest_pending_of_all_is_evicted_when_the_pool_is_full() {
        let gate = Gate::new(8);
        let all: Vec<_> = (0..PENDING_MAX as u32)
            .map(|i| {
                let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
                gate.admit(SocketAddr::new(ip.into(), 1))
            })
            .collect();
        let newest = gate.admit(addr("192.168.1.1", 1));
        assert!(is_expired(&all[0]).await);
        assert!(!is_expired(&all[1]).await);
        assert!(!is_expired(&newest).await);
        assert_eq!(gate.pending(), PENDING_MAX);
    }

    /// A pending connection expires at the deadline.
    #[tokio::test(start_paused = true)]
    async fn a_pending_connection_expires_after_the_deadline() {
        let gate = Gate::new(1);
        let a = gate.admit(addr("10.0.0.1", 1));
        let t0 = tokio::time::Instant::now();
        a.expired().await;
        assert_eq!(t0.elapsed(), PENDING_DEADLINE);
    }
}
