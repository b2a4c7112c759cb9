//! The open connections, kept in two orders: by id, and by when each was
//! last heard from.
//!
//! The driver asks for [`crate::Coordinator::next_timeout`] after every
//! input, and every message from a worker moves its heartbeat deadline. A
//! pass over all connections to find the earliest deadline made the
//! coordinator's cost per step grow with the square of the number of
//! workers (`glom bench --scale coordinator` measures it). Here the
//! earliest deadline is the front of a queue of `(time, connection)`
//! entries in time order: a message appends an entry and leaves the old
//! one in place, stale; stale entries are dropped when they reach the
//! front, or all at once when they outnumber the live ones. Both are
//! amortised `O(1)` per message.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use glom_protocol::message::Hello;

use crate::state::ConnId;

/// One connection and what we know of its peer.
#[derive(Debug)]
pub(crate) struct Conn {
    /// When it was last heard from; changed only through [`Conns::touch`],
    /// which keeps the order by time.
    last_seen: Instant,
    pub(crate) role: Role,
}

#[derive(Debug)]
pub(crate) enum Role {
    /// Connected, no hello yet.
    New,
    /// Admitted, waiting for the other workers to join.
    Waiting(Hello),
    /// A worker of the running cluster.
    Worker(u32),
}

/// The open connections (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Conns {
    by_id: BTreeMap<ConnId, Conn>,
    /// `(time, id)` in time order; an entry is live while `id` is open and
    /// was last heard from at `time`; each open connection has one live
    /// entry, and the front entry is always live.
    by_seen: VecDeque<(Instant, ConnId)>,
}

impl Conns {
    /// A new connection, heard from at `now`, without a hello yet.
    pub(crate) fn insert(&mut self, id: ConnId, now: Instant) {
        let conn = Conn {
            last_seen: now,
            role: Role::New,
        };
        self.by_id.insert(id, conn);
        self.seen(id, now);
    }

    /// Forget `id`; its entry, if it was open.
    pub(crate) fn remove(&mut self, id: ConnId) -> Option<Conn> {
        let c = self.by_id.remove(&id)?;
        self.tidy();
        Some(c)
    }

    pub(crate) fn get(&self, id: ConnId) -> Option<&Conn> {
        self.by_id.get(&id)
    }

    /// The role of `id`, to change it.
    pub(crate) fn role_mut(&mut self, id: ConnId) -> Option<&mut Role> {
        self.by_id.get_mut(&id).map(|c| &mut c.role)
    }

    /// `id` was heard from at `now`; its entry, if it is open.
    pub(crate) fn touch(&mut self, id: ConnId, now: Instant) -> Option<&Conn> {
        let c = self.by_id.get_mut(&id)?;
        if c.last_seen != now {
            c.last_seen = now;
            self.seen(id, now);
        }
        self.by_id.get(&id)
    }

    /// Every connection, by id.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (ConnId, &Conn)> {
        self.by_id.iter().map(|(&id, c)| (id, c))
    }

    /// When the connection heard from longest ago was last heard from.
    pub(crate) fn oldest(&self) -> Option<Instant> {
        self.by_seen.front().map(|&(t, _)| t)
    }

    /// The connections silent for longer than `timeout` at `now`, by id,
    /// with how long each was silent.
    pub(crate) fn silent(&self, now: Instant, timeout: Duration) -> Vec<(ConnId, Duration)> {
        let mut out: Vec<(ConnId, Duration)> = self
            .by_seen
            .iter()
            .filter(|&&(t, id)| self.live(t, id))
            .map(|&(t, id)| (id, now.saturating_duration_since(t)))
            .take_while(|&(_, silent)| silent > timeout)
            .collect();
        out.sort_unstable_by_key(|&(id, _)| id);
        out.dedup_by_key(|&mut (id, _)| id);
        out
    }

    fn live(&self, t: Instant, id: ConnId) -> bool {
        self.by_id.get(&id).is_some_and(|c| c.last_seen == t)
    }

    /// Add the live entry of `id`, heard from at `now` (its `last_seen`).
    fn seen(&mut self, id: ConnId, now: Instant) {
        if self.by_seen.back().is_some_and(|&(t, _)| t > now) {
            // A time earlier than one already queued (the driver's clock
            // is monotonic, so only a caller that goes back in time): put
            // the entry in its place.
            let at = self.by_seen.partition_point(|&(t, _)| t <= now);
            self.by_seen.insert(at, (now, id));
        } else {
            self.by_seen.push_back((now, id));
        }
        if self.by_seen.len() > 2 * self.by_id.len() + 64 {
            let by_id = &self.by_id;
            self.by_seen
                .retain(|&(t, id)| by_id.get(&id).is_some_and(|c| c.last_seen == t));
        }
        self.tidy();
    }

    /// Drop stale entries from the front.
    fn tidy(&mut self) {
        while let Some(&(t, id)) = self.by_seen.front() {
            if self.live(t, id) {
                break;
            }
            self.by_seen.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_and_the_silent_follow_every_touch() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut c = Conns::default();
        for i in 0..4 {
            c.insert(ConnId(i), t0 + s(i));
        }
        assert_eq!(c.oldest(), Some(t0));
        c.touch(ConnId(0), t0 + s(10));
        c.touch(ConnId(2), t0 + s(11));
        assert_eq!(c.oldest(), Some(t0 + s(1)));
        // At t0 + 12 with a 5 s timeout: 1 (11 s) and 3 (9 s) are silent.
        let silent = c.silent(t0 + s(12), s(5));
        assert_eq!(silent, vec![(ConnId(1), s(11)), (ConnId(3), s(9))]);
        assert!(c.remove(ConnId(1)).is_some());
        assert!(c.remove(ConnId(1)).is_none());
        assert_eq!(c.oldest(), Some(t0 + s(3)));
        c.insert(ConnId(3), t0 + s(20));
        assert_eq!(c.oldest(), Some(t0 + s(10)));
        assert_eq!(c.iter().count(), 3);
        assert!(c.silent(t0 + s(12), s(5)).is_empty());
        assert_eq!(c.silent(t0 + s(16), s(5)), vec![(ConnId(0), s(6))]);
    }

    #[test]
    fn stale_entries_stay_bounded_and_an_earlier_time_is_ordered() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut c = Conns::default();
        c.insert(ConnId(0), t0);
        c.insert(ConnId(1), t0);
        for i in 1..1000 {
            c.touch(ConnId(1), t0 + ms(i));
        }
        // Connection 0 is still the oldest; the queue did not grow with
        // every touch of connection 1.
        assert_eq!(c.oldest(), Some(t0));
        assert!(c.by_seen.len() <= 2 * 2 + 64, "{}", c.by_seen.len());
        c.touch(ConnId(0), t0 + ms(2000));
        assert_eq!(c.oldest(), Some(t0 + ms(999)));
        // A caller going back in time still gets the earliest deadline.
        c.touch(ConnId(0), t0 + ms(5));
        assert_eq!(c.oldest(), Some(t0 + ms(5)));
        let silent = c.silent(t0 + ms(2000), ms(1500));
        assert_eq!(silent, vec![(ConnId(0), ms(1995))]);
    }
}
