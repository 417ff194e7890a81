//! Requests in flight: admission against the slots and the queue, submission to the
//! engine, and the bridge that carries the engine's events into async code.
//!
//! A [`Job`] is one HTTP request's sequences (its `n` choices, or a completion's prompts
//! times `n`). Dropping it (the response finished, or the client went away and the
//! handler or stream was dropped) cancels whatever of it still runs, which the engine
//! notices within one step, and gives its places back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use llama2::engine::{Event, EventKind, EventSink, Finished, TokenOut};
use llama2::{Engine, Request};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::error::ApiError;
use crate::metrics::Metrics;

/// Places for sequences: the engine's slots plus the queue in front of them.
#[derive(Debug)]
pub struct Admission {
    capacity: usize,
    inner: Mutex<InFlight>,
}

#[derive(Debug, Default)]
struct InFlight {
    /// Shutting down: nothing more is admitted.
    closed: bool,
    sequences: usize,
    next_id: u64,
    /// Cancel flags of every job, so that a shutdown can end them all.
    flags: HashMap<u64, Vec<Arc<AtomicBool>>>,
}

impl Admission {
    /// Room for `capacity` sequences at once (slots + queue).
    pub fn new(capacity: usize) -> Admission {
        Admission {
            capacity,
            inner: Mutex::default(),
        }
    }

    /// Most sequences at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InFlight> {
        // Nothing in the critical sections can panic half-way; a poisoned lock still
        // holds consistent counts.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `n` places, or says the server is full (503 with `Retry-After`); they are
    /// freed when the ticket drops.
    pub fn admit(self: &Arc<Self>, n: usize) -> Result<Ticket, ApiError> {
        let mut g = self.lock();
        if g.closed {
            return Err(ApiError::unavailable(
                "the server is shutting down",
                "draining",
            ));
        }
        if g.sequences.saturating_add(n) > self.capacity {
            return Err(ApiError::unavailable(
                format!(
                    "the server is at capacity ({} sequences running or queued); retry later",
                    g.sequences
                ),
                "server_overloaded",
            ));
        }
        g.sequences += n;
        g.next_id += 1;
        let id = g.next_id;
        g.flags.insert(id, Vec::new());
        Ok(Ticket {
            admission: Arc::clone(self),
            id,
            n,
        })
    }

    /// Cancels every job in flight and admits no more (shutdown): each ends within one
    /// engine step.
    pub fn cancel_all(&self) {
        let mut g = self.lock();
        g.closed = true;
        for flags in g.flags.values() {
            for f in flags {
                f.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Sequences admitted and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.lock().sequences
    }
}

/// A job's places; dropping it cancels the job's sequences and frees the places.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    n: usize,
}

impl Ticket {
    fn add_flag(&self, flag: Arc<AtomicBool>) {
        let mut g = self.admission.lock();
        if g.closed {
            // Admitted just before a shutdown: end at once.
            flag.store(true, Ordering::Relaxed);
        }
        if let Some(v) = g.flags.get_mut(&self.id) {
            v.push(flag);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut g = self.admission.lock();
        g.sequences -= self.n;
        if let Some(flags) = g.flags.remove(&self.id) {
            for f in flags {
                f.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// Carries engine events into a tokio channel (never blocks the engine thread).
struct AsyncSink(UnboundedSender<Event>);

impl EventSink for AsyncSink {
    fn deliver(&self, event: Event) -> bool {
        self.0.send(event).is_ok()
    }
}

/// What a job reports, per choice (the tag it was submitted with).
#[derive(Debug)]
pub enum Update {
    /// A generated token of choice `.0`.
    Token(usize, TokenOut),
    /// Choice `.0` ended.
    Done(usize, Finished),
}

/// Per-sequence timing for the latency histograms.
#[derive(Debug, Clone, Copy)]
struct Timing {
    first: bool,
    last: Instant,
}

/// One HTTP request's sequences in the engine.
pub struct Job {
    events: UnboundedReceiver<Event>,
    /// Each choice's cancel flag, by tag.
    cancels: Vec<Arc<AtomicBool>>,
    _ticket: Ticket,
    arrived: Instant,
    timing: Vec<Timing>,
    open: usize,
    metrics: Arc<Metrics>,
}

impl Job {
    /// Admits and submits `requests` (tags must be `0..requests.len()`). The whole job
    /// is refused if there is no room for all of it.
    pub fn start(
        engine: &Engine,
        admission: &Arc<Admission>,
        metrics: &Arc<Metrics>,
        requests: Vec<Request>,
        arrived: Instant,
    ) -> Result<Job, ApiError> {
        let n = requests.len();
        if n > admission.capacity() {
            return Err(ApiError::bad_request(format!(
                "the request needs {n} sequences but the server takes at most {} at once",
                admission.capacity()
            )));
        }
        let ticket = admission.admit(n)?;
        let (tx, rx) = unbounded_channel();
        let mut cancels = Vec::with_capacity(n);
        for req in requests {
            debug_assert!((req.tag as usize) < n);
            // On an error the ticket is dropped, cancelling what was already submitted.
            let flag = engine.submit_to(req, AsyncSink(tx.clone()))?;
            ticket.add_flag(Arc::clone(&flag));
            cancels.push(flag);
        }
        Ok(Job {
            events: rx,
            cancels,
            _ticket: ticket,
            arrived,
            timing: vec![
                Timing {
                    first: true,
                    last: arrived
                };
                n
            ],
            open: n,
            metrics: Arc::clone(metrics),
        })
    }

    /// Stops choice `i` at its next step (it then ends with its `Done`).
    pub fn cancel(&self, i: usize) {
        if let Some(f) = self.cancels.get(i) {
            f.store(true, Ordering::Relaxed);
        }
    }

    /// The next update; `None` once every choice has ended. An engine failure is a 500.
    pub async fn next(&mut self) -> Option<Result<Update, ApiError>> {
        if self.open == 0 {
            return None;
        }
        let Some(ev) = self.events.recv().await else {
            self.open = 0;
            return Some(Err(ApiError::internal(
                "the engine stopped before the request ended",
            )));
        };
        let choice = ev.tag as usize;
        let now = Instant::now();
        Some(match ev.kind {
            EventKind::Token(t) => {
                if let Some(tm) = self.timing.get_mut(choice) {
                    let since = now.duration_since(tm.last).as_secs_f64();
                    if tm.first {
                        self.metrics.time_to_first_token.observe(since);
                        tm.first = false;
                    } else {
                        self.metrics.inter_token.observe(since);
                    }
                    tm.last = now;
                }
                Ok(Update::Token(choice, t))
            }
            EventKind::Done(f) => {
                self.open -= 1;
                self.metrics.prompt_tokens.inc_by(f.prompt_tokens as u64);
                self.metrics.cached_tokens.inc_by(f.cached_tokens as u64);
                self.metrics
                    .generated_tokens
                    .inc_by(f.generated_tokens as u64);
                if self.open == 0 {
                    self.metrics
                        .request_duration
                        .observe(now.duration_since(self.arrived).as_secs_f64());
                }
                Ok(Update::Done(choice, f))
            }
            EventKind::Failed(e) => {
                self.open = 0;
                Err(ApiError::internal(format!("generation failed: {e}")))
            }
        })
    }
}
