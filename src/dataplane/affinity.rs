//! ClientIP session affinity of one worker for one Service port: which endpoint each client
//! IP was sent to, until when.
//!
//! Kubernetes semantics (shared/design/SEMANTICS.md): the key is the client IP only; the
//! timer restarts at each new connection; an entry whose endpoint is gone or unusable is
//! replaced by a normal selection. Remembered are endpoint *addresses*, not snapshot ids, so
//! affinity survives reloads.
//!
//! Bounded and incremental: at most `max_entries` clients; every insertion looks at two
//! entries in insertion order and drops those that expired (a refreshed one goes to the
//! back), so expired entries are reclaimed a little at a time, never in a sweep; when full,
//! the oldest-inserted client is forgotten. Private to one worker (the reuseport BPF program
//! steers each client IP to one worker), so no locks.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// Entries examined for expiry per insertion.
const RECLAIM_PER_INSERT: usize = 2;

#[derive(Debug, Clone, Copy)]
struct Entry {
    endpoint: SocketAddr,
    expires: Instant,
}

/// See the module documentation.
#[derive(Debug)]
pub struct AffinityTable {
    entries: HashMap<IpAddr, Entry, ahash::RandomState>,
    /// Each remembered IP once, oldest insertion (or last rotation) first.
    order: VecDeque<IpAddr>,
    max: usize,
}

impl AffinityTable {
    pub fn new(max_entries: u32) -> AffinityTable {
        AffinityTable {
            entries: HashMap::default(),
            order: VecDeque::new(),
            max: max_entries.max(1) as usize,
        }
    }

    /// The endpoint `client` was sent to, if that has not expired at `now`.
    pub fn lookup(&self, client: IpAddr, now: Instant) -> Option<SocketAddr> {
        self.entries
            .get(&client)
            .filter(|e| e.expires > now)
            .map(|e| e.endpoint)
    }

    /// Remember (or refresh) that `client` goes to `endpoint` until `expires`.
    pub fn remember(
        &mut self,
        client: IpAddr,
        endpoint: SocketAddr,
        now: Instant,
        expires: Instant,
    ) {
        self.reclaim(now, RECLAIM_PER_INSERT);
        if let Some(e) = self.entries.get_mut(&client) {
            *e = Entry { endpoint, expires };
            return;
        }
        if self.entries.len() >= self.max {
            if let Some(oldest) = self.order.pop_front() {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(client, Entry { endpoint, expires });
        self.order.push_back(client);
    }

    /// Clients remembered now (expired ones not yet reclaimed included).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    fn reclaim(&mut self, now: Instant, budget: usize) {
        for _ in 0..budget {
            let Some(&ip) = self.order.front() else {
                return;
            };
            self.order.pop_front();
            match self.entries.get(&ip) {
                Some(e) if e.expires <= now => {
                    self.entries.remove(&ip);
                }
                // Still live (refreshed since): look at it again after the others.
                Some(_) => self.order.push_back(ip),
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, n])
    }

    fn ep(n: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, n], 9000))
    }

    #[test]
    fn remembers_until_the_timeout_and_a_new_connection_restarts_the_timer() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        let mut t = AffinityTable::new(100);
        t.remember(ip(1), ep(1), t0, t0 + ttl);
        assert_eq!(t.lookup(ip(1), t0 + Duration::from_secs(9)), Some(ep(1)));
        let t1 = t0 + Duration::from_secs(9);
        t.remember(ip(1), ep(1), t1, t1 + ttl);
        assert_eq!(t.lookup(ip(1), t0 + Duration::from_secs(15)), Some(ep(1)));
        assert_eq!(
            t.lookup(ip(1), t1 + ttl),
            None,
            "expired at exactly the timeout"
        );
    }

    #[test]
    fn stays_bounded_and_reclaims_expired_entries_incrementally() {
        let t0 = Instant::now();
        let mut t = AffinityTable::new(50);
        for n in 0..200u8 {
            t.remember(ip(n), ep(n % 3), t0, t0 + Duration::from_secs(1));
            assert!(t.len() <= 50);
        }
        // After expiry, each new insertion reclaims up to two expired entries.
        let later = t0 + Duration::from_secs(2);
        for n in 0..30u8 {
            t.remember(
                IpAddr::from([127, 1, 0, n]),
                ep(1),
                later,
                later + Duration::from_secs(1),
            );
        }
        // 50 expired entries, two reclaimed per insertion: all gone after 25 insertions.
        assert_eq!(t.len(), 30, "expired entries were not reclaimed");
        assert_eq!(t.lookup(ip(199), later), None);
    }

    #[test]
    fn refreshed_entries_survive_reclaiming() {
        let t0 = Instant::now();
        let mut t = AffinityTable::new(10);
        t.remember(ip(1), ep(1), t0, t0 + Duration::from_secs(1));
        t.remember(ip(2), ep(2), t0, t0 + Duration::from_secs(1));
        let t1 = t0 + Duration::from_millis(900);
        t.remember(ip(1), ep(1), t1, t1 + Duration::from_secs(1));
        let t2 = t0 + Duration::from_millis(1500);
        t.remember(ip(3), ep(3), t2, t2 + Duration::from_secs(1));
        assert_eq!(t.lookup(ip(1), t2), Some(ep(1)));
        assert_eq!(t.lookup(ip(2), t2), None);
    }
}
