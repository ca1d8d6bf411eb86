//! Request coalescing: identical concurrent deterministic requests share one generation.
//!
//! Two requests are identical when their prompt ids, sampling parameters, `max_tokens` and
//! options are equal; deterministic when they are greedy or seeded (anything else is never
//! coalesced). The first starts a [`Flight`]: one engine request whose events a driver task
//! appends to a log; every identical request that arrives while it runs joins it as another
//! [`Subscriber`] and reads the log from the start, so each client gets the whole stream.
//! A client that goes away drops only its subscriber; the engine request is aborted when the
//! last one goes.
//!
//! Invariants: a flight is in the table only while its engine request runs; each subscriber
//! sees every event exactly once, in order, ending with the engine's last event (or an
//! error if the engine went away).

use kr_engine::{Event, RequestStream};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};

/// What makes two requests identical (see the module header).
pub type Key = String;

#[derive(Default)]
struct Log {
    events: Vec<Event>,
    ended: bool,
    subscribers: usize,
    wakers: Vec<Waker>,
}

/// One shared generation.
pub struct Flight {
    log: Mutex<Log>,
    /// Wakes the driver when the last subscriber leaves.
    abandoned: tokio::sync::Notify,
}

impl Flight {
    fn lock(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn subscribe(self: &Arc<Self>) -> Subscriber {
        self.lock().subscribers += 1;
        Subscriber {
            flight: self.clone(),
            next: 0,
        }
    }

    fn push(&self, ev: Option<Event>) {
        let mut log = self.lock();
        match ev {
            Some(ev) => log.events.push(ev),
            None => log.ended = true,
        }
        for w in log.wakers.drain(..) {
            w.wake();
        }
    }
}

/// One client's view of a flight: the log from the start, then each event as it comes.
pub struct Subscriber {
    flight: Arc<Flight>,
    next: usize,
}

impl futures_util::Stream for Subscriber {
    type Item = Event;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let this = self.get_mut();
        let mut log = this.flight.lock();
        if let Some(ev) = log.events.get(this.next) {
            this.next += 1;
            return Poll::Ready(Some(ev.clone()));
        }
        if log.ended {
            return Poll::Ready(None);
        }
        log.wakers.push(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let mut log = self.flight.lock();
        log.subscribers -= 1;
        if log.subscribers == 0 && !log.ended {
            self.flight.abandoned.notify_one();
        }
    }
}

/// The flights in the air, by key, and how many requests joined one.
#[derive(Default)]
pub struct Coalescer {
    flights: Mutex<HashMap<Key, Weak<Flight>>>,
    pub joined: AtomicU64,
}

impl Coalescer {
    /// The key of a request, `None` when it is not deterministic.
    pub fn key(deterministic: bool, parts: &impl std::fmt::Debug) -> Option<Key> {
        deterministic.then(|| format!("{parts:?}"))
    }

    /// Joins the flight of `key` if one is in the air, else starts one around the engine
    /// request `submit` makes and returns its first subscriber. The table stays locked from
    /// the look-up to the insert, so identical requests arriving together never start two
    /// flights. Needs a tokio runtime (the driver is a task).
    pub fn join_or_start<E>(
        self: &Arc<Self>,
        key: Key,
        submit: impl FnOnce() -> Result<RequestStream, E>,
    ) -> Result<Subscriber, E> {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sub) = flights.get(&key).and_then(Weak::upgrade).and_then(|f| {
            let live = {
                let log = f.lock();
                // A flight whose clients all left is being aborted: start afresh instead.
                !log.ended && log.subscribers > 0
            };
            live.then(|| f.subscribe())
        }) {
            self.joined.fetch_add(1, Relaxed);
            return Ok(sub);
        }
        let stream = submit()?;
        let flight = Arc::new(Flight {
            log: Mutex::default(),
            abandoned: tokio::sync::Notify::new(),
        });
        let first = flight.subscribe();
        flights.insert(key.clone(), Arc::downgrade(&flight));
        drop(flights);
        tokio::spawn(drive(self.clone(), key, flight, stream));
        Ok(first)
    }

    fn land(&self, key: &Key, flight: &Arc<Flight>) {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        if flights
            .get(key)
            .is_some_and(|w| w.as_ptr() == Arc::as_ptr(flight))
        {
            flights.remove(key);
        }
    }
}

/// Copies the engine's events into the flight's log until the request ends or every
/// subscriber has left (dropping the stream then aborts the engine request).
async fn drive(table: Arc<Coalescer>, key: Key, flight: Arc<Flight>, mut stream: RequestStream) {
    loop {
        tokio::select! {
            ev = stream.next() => {
                let last = !matches!(ev, Some(Event::Token { .. }));
                if last {
                    // Out of the table first: a request arriving now starts its own flight.
                    table.land(&key, &flight);
                }
                flight.push(ev);
                if last {
                    flight.push(None);
                    return;
                }
            }
            _ = flight.abandoned.notified() => {
                table.land(&key, &flight);
                flight.push(None);
                return;
            }
        }
    }
}
