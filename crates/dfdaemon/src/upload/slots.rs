//! Upload slots shared fairly across remote addresses.
//!
//! A fixed number of slots (`upload.concurrentLimit`), at most `upload.perPeerConcurrentLimit`
//! of them per remote address. While a slot is free, whoever asks gets it. When none is free,
//! requests wait, and a freed slot goes to the waiting address that holds the fewest slots; among
//! those, to the one served least recently (an address seen for the first time, or back after
//! holding and waiting for nothing, counts as never served), then to the one waiting longest.
//! Within one address requests keep their order.
//!
//! Why this and not a FIFO queue (`tokio::sync::Semaphore`): with FIFO, 20 addresses that queue
//! 200 requests they never read make every later child wait for all of them to be served or time
//! out (minutes). Here a new address is next in line as soon as every waiting address holds as
//! many slots as it does, however deep their queues.
//!
//! Why no cap on an address's share while slots are free: a cap (say total / active addresses)
//! would leave slots idle under light load, and under contention the fewest-held rule already
//! moves every freed slot towards the smallest holders, so shares even out as transfers end.
//! Nothing here takes a slot back from a transfer that is sending; a transfer whose child stopped
//! reading gives its slot up sooner when [`Slot::wanted`] says somebody waits for it (see
//! `data.rs`), which is what keeps a slot from being held by a child that reads nothing.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::oneshot;

/// The slots, shared by every connection of the upload server.
pub(crate) struct FairSlots {
    state: Arc<Mutex<State>>,
}

/// One slot held by one transfer; given back (to the next waiter, if any) when dropped.
pub(crate) struct Slot {
    state: Arc<Mutex<State>>,
    ip: IpAddr,
}

struct State {
    total: usize,
    per_address: usize,
    in_use: usize,
    /// Ticks on every queued request and every grant: the order of waiters and of grants.
    clock: u64,
    /// Addresses holding or waiting for a slot; an address holding and waiting for nothing is
    /// forgotten, so the map is as large as the set of active children.
    addresses: HashMap<IpAddr, Address>,
}

#[derive(Default)]
struct Address {
    held: usize,
    /// `clock` at this address's last grant (0: never, or not since it was last idle).
    last_grant: u64,
    waiting: VecDeque<Waiter>,
}

struct Waiter {
    seq: u64,
    wake: oneshot::Sender<()>,
}

impl FairSlots {
    /// `total` slots, at most `per_address` for one address (each at least 1).
    pub(crate) fn new(total: usize, per_address: usize) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                total: total.max(1),
                per_address: per_address.max(1),
                in_use: 0,
                clock: 0,
                addresses: HashMap::new(),
            })),
        }
    }

    /// Wait for a slot for `ip`. Cancel-safe: a request dropped while waiting leaves the queue,
    /// and one dropped just after it was granted a slot passes that slot on.
    pub(crate) async fn acquire(&self, ip: IpAddr) -> Slot {
        loop {
            let (seq, rx) = {
                let mut s = lock(&self.state);
                if s.admits_now(ip) {
                    s.grant(ip);
                    return self.slot(ip);
                }
                let (tx, rx) = oneshot::channel();
                s.clock += 1;
                let seq = s.clock;
                s.addresses
                    .entry(ip)
                    .or_default()
                    .waiting
                    .push_back(Waiter { seq, wake: tx });
                (seq, rx)
            };
            let mut waiting = Waiting {
                state: &self.state,
                ip,
                seq,
                rx,
                done: false,
            };
            let granted = (&mut waiting.rx).await;
            waiting.done = true;
            if granted.is_ok() {
                return self.slot(ip);
            }
            // The sender went away without a grant (not done by `State`): queue again.
        }
    }

    fn slot(&self, ip: IpAddr) -> Slot {
        Slot {
            state: self.state.clone(),
            ip,
        }
    }

    #[cfg(test)]
    fn in_use(&self) -> usize {
        lock(&self.state).in_use
    }

    #[cfg(test)]
    fn addresses(&self) -> usize {
        lock(&self.state).addresses.len()
    }
}

impl Slot {
    /// Whether a waiting request would get a slot if this one were given back: someone at
    /// another address that is under its per-address limit, or a request from this slot's own
    /// address. A transfer that makes no progress gives up early when this holds.
    pub(crate) fn wanted(&self) -> bool {
        let s = lock(&self.state);
        s.addresses
            .iter()
            .any(|(ip, a)| !a.waiting.is_empty() && (*ip == self.ip || a.held < s.per_address))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.state).release(self.ip);
    }
}

/// A queued request; takes itself out of the queue (or passes on a slot granted to it) when the
/// request is dropped before it saw the grant.
struct Waiting<'a> {
    state: &'a Mutex<State>,
    ip: IpAddr,
    seq: u64,
    rx: oneshot::Receiver<()>,
    done: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Grants are made under this lock, so what `try_recv` says cannot change meanwhile.
        let mut s = lock(self.state);
        if self.rx.try_recv().is_ok() {
            s.release(self.ip);
            return;
        }
        if let Some(a) = s.addresses.get_mut(&self.ip) {
            a.waiting.retain(|w| w.seq != self.seq);
        }
        s.forget_if_idle(self.ip);
    }
}

impl State {
    /// A free slot, `ip` under its own limit and none of its requests ahead of this one.
    fn admits_now(&self, ip: IpAddr) -> bool {
        let a = self.addresses.get(&ip);
        self.in_use < self.total
            && a.is_none_or(|a| a.held < self.per_address && a.waiting.is_empty())
    }

    fn grant(&mut self, ip: IpAddr) {
        self.in_use += 1;
        self.clock += 1;
        let clock = self.clock;
        let a = self.addresses.entry(ip).or_default();
        a.held += 1;
        a.last_grant = clock;
    }

    fn release(&mut self, ip: IpAddr) {
        self.in_use = self.in_use.saturating_sub(1);
        if let Some(a) = self.addresses.get_mut(&ip) {
            a.held = a.held.saturating_sub(1);
        }
        self.forget_if_idle(ip);
        self.hand_out();
    }

    /// Give free slots to waiters, fairest first (see the module doc).
    fn hand_out(&mut self) {
        while self.in_use < self.total {
            let Some(ip) = self.next_address() else {
                return;
            };
            let Some(waiter) = self
                .addresses
                .get_mut(&ip)
                .and_then(|a| a.waiting.pop_front())
            else {
                return;
            };
            // A waiter takes itself out of the queue before it goes away, so this send only
            // fails if that ever changes; then the slot simply stays free for the next one.
            if waiter.wake.send(()).is_ok() {
                self.grant(ip);
            }
            self.forget_if_idle(ip);
        }
    }

    /// The waiting address a freed slot goes to: fewest held, then served least recently, then
    /// waiting longest. A linear scan: the map holds only active addresses.
    fn next_address(&self) -> Option<IpAddr> {
        self.addresses
            .iter()
            .filter(|(_, a)| a.held < self.per_address)
            .filter_map(|(ip, a)| {
                let first = a.waiting.front()?;
                Some(((a.held, a.last_grant, first.seq), *ip))
            })
            .min()
            .map(|(_, ip)| ip)
    }

    fn forget_if_idle(&mut self, ip: IpAddr) {
        if self
            .addresses
            .get(&ip)
            .is_some_and(|a| a.held == 0 && a.waiting.is_empty())
        {
            self.addresses.remove(&ip);
        }
    }
}

/// The state stays consistent across a panic elsewhere (every change is a few integer updates),
/// so a poisoned lock is still used.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use std::future::Future;
    use std::pin::Pin;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    type Pending<'a> = Pin<Box<dyn Future<Output = Slot> + Send + 'a>>;

    /// A queued request, polled once so it takes its place in line.
    fn queue(slots: &FairSlots, from: IpAddr) -> Pending<'_> {
        let mut f: Pending<'_> = Box::pin(slots.acquire(from));
        assert!((&mut f).now_or_never().is_none(), "{from} should wait");
        f
    }

    fn take_now(slots: &FairSlots, from: IpAddr) -> Slot {
        slots
            .acquire(from)
            .now_or_never()
            .unwrap_or_else(|| panic!("{from} should get a free slot at once"))
    }

    fn ready(f: &mut Pending<'_>) -> Option<Slot> {
        f.now_or_never()
    }

    #[test]
    fn a_new_address_gets_the_next_slot_before_a_greedy_address_queue() {
        let slots = FairSlots::new(4, 16);
        let greedy = ip(2);
        let mut held: Vec<Slot> = (0..4).map(|_| take_now(&slots, greedy)).collect();
        let mut greedy_queue: Vec<Pending<'_>> = (0..10).map(|_| queue(&slots, greedy)).collect();
        let mut newcomer = queue(&slots, ip(50));

        drop(held.pop());
        let got = ready(&mut newcomer).expect("the newcomer gets the freed slot");
        assert_eq!(got.ip, ip(50));
        for f in &mut greedy_queue {
            assert!(ready(f).is_none(), "the greedy address's queue waits");
        }
        // The next freed slot goes back to the greedy address, in its own order.
        drop(held.pop());
        let _greedy_again = ready(&mut greedy_queue[0]).expect("the greedy address's first");
        assert!(ready(&mut greedy_queue[1]).is_none());
        assert_eq!(slots.in_use(), 4);
    }

    #[test]
    fn a_freed_slot_goes_to_the_address_holding_fewest() {
        let slots = FairSlots::new(4, 16);
        let (a, b) = (ip(2), ip(3));
        let mut a_held: Vec<Slot> = (0..3).map(|_| take_now(&slots, a)).collect();
        let _b_held = take_now(&slots, b);
        // a waited first, but holds 3 to b's 1.
        let mut a_next = queue(&slots, a);
        let mut b_next = queue(&slots, b);
        drop(a_held.pop());
        let _b_second = ready(&mut b_next).expect("b holds fewer");
        assert!(ready(&mut a_next).is_none());
    }

    #[test]
    fn equal_holders_take_turns() {
        let slots = FairSlots::new(2, 16);
        let (a, b, c) = (ip(2), ip(3), ip(4));
        let first = take_now(&slots, a);
        let second = take_now(&slots, b);
        // Three addresses wait with two requests each, a first.
        let mut queues: Vec<(IpAddr, Pending<'_>)> = Vec::new();
        for _ in 0..2 {
            for who in [a, b, c] {
                queues.push((who, queue(&slots, who)));
            }
        }
        let mut order = Vec::new();
        let mut holding = vec![first, second];
        while !queues.is_empty() {
            holding.remove(0);
            let before = queues.len();
            queues.retain_mut(|(who, f)| match ready(f) {
                Some(slot) => {
                    order.push(*who);
                    holding.push(slot);
                    false
                }
                None => true,
            });
            assert_eq!(before - queues.len(), 1, "one freed slot, one grant");
        }
        // c has never been served, then a and b alternate by who was served least recently.
        assert_eq!(order, [c, a, b, c, a, b]);
        drop(holding);
        assert_eq!(slots.in_use(), 0);
        assert_eq!(slots.addresses(), 0, "idle addresses are forgotten");
    }

    #[test]
    fn the_per_address_limit_holds_while_slots_are_free() {
        let slots = FairSlots::new(10, 2);
        let a = ip(2);
        let first = take_now(&slots, a);
        let _second = take_now(&slots, a);
        let mut third = queue(&slots, a);
        let _other = take_now(&slots, ip(3));
        drop(first);
        let _third = ready(&mut third).expect("a's own slot came back");
    }

    #[test]
    fn cancelled_waiters_leave_the_queue_and_leak_no_slot() {
        let slots = FairSlots::new(2, 16);
        let a = take_now(&slots, ip(2));
        let b = take_now(&slots, ip(3));
        let cancelled: Vec<Pending<'_>> = (0..5).map(|_| queue(&slots, ip(4))).collect();
        let mut kept = queue(&slots, ip(5));
        drop(cancelled);
        drop(a);
        let _kept = ready(&mut kept).expect("the queue skipped the cancelled requests");
        drop(b);
        assert_eq!(slots.in_use(), 1);
    }

    #[test]
    fn a_slot_granted_to_a_request_dropped_before_it_looked_is_passed_on() {
        let slots = FairSlots::new(1, 16);
        let held = take_now(&slots, ip(2));
        let granted_unseen = queue(&slots, ip(3));
        let mut next = queue(&slots, ip(4));
        drop(held); // grants ip(3), whose future is never polled again
        assert_eq!(slots.in_use(), 1);
        drop(granted_unseen);
        let _next = ready(&mut next).expect("the slot went on to the next waiter");
        assert_eq!(slots.in_use(), 1);
    }

    #[test]
    fn wanted_says_whether_a_waiter_would_take_the_slot() {
        let slots = FairSlots::new(2, 1);
        let a = take_now(&slots, ip(2));
        assert!(!a.wanted(), "nobody waits");
        let _a_again = queue(&slots, ip(2));
        assert!(a.wanted(), "a's own next request waits for it");
        let b = take_now(&slots, ip(3));
        assert!(a.wanted());
        assert!(
            !b.wanted(),
            "only a's request waits and b's slot would not go to it"
        );
        let _c = queue(&slots, ip(4));
        assert!(b.wanted(), "c waits for any slot");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_tasks_many_addresses_end_with_every_slot_free() {
        let slots = Arc::new(FairSlots::new(3, 2));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200u32 {
            let slots = slots.clone();
            tasks.spawn(async move {
                let from = ip(2 + (i % 7) as u8);
                if i % 5 == 0 {
                    // Some give up while waiting.
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_micros(50),
                        slots.acquire(from),
                    )
                    .await;
                    return;
                }
                let _slot = slots.acquire(from).await;
                tokio::task::yield_now().await;
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("task");
        }
        assert_eq!(slots.in_use(), 0);
        assert_eq!(slots.addresses(), 0);
    }
}
