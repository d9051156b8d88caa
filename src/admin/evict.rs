//! Which admin connection gives up its slot when the cap is reached: the oldest one
//! not answering a request, so a fresh `/healthz` gets in during a flood (issue 19).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// The open admin connections, oldest first. Only the admin accept loop and admin
/// connection tasks touch it; the data path never does.
#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    live: VecDeque<Slot>,
}

struct Slot {
    id: u64,
    busy: Arc<AtomicBool>,
    evict: CancellationToken,
    /// Resolves (closed) once the connection's task has ended and its permit is back.
    gone: oneshot::Receiver<()>,
}

/// A connection's place in the [`Registry`], held by its task: leaves it when
/// dropped. Fields drop in order, so the permit is back before `gone` says so.
pub struct Registered<P> {
    registry: Arc<Registry>,
    id: u64,
    pub busy: Arc<AtomicBool>,
    pub evicted: CancellationToken,
    _permit: P,
    _gone: oneshot::Sender<()>,
}

impl<P> Drop for Registered<P> {
    fn drop(&mut self) {
        self.registry.lock().live.retain(|s| s.id != self.id);
    }
}

/// Marks a connection busy (a request being answered) while it lives.
pub struct Busy(Arc<AtomicBool>);

impl Busy {
    pub fn new(flag: &Arc<AtomicBool>) -> Self {
        flag.store(true, Ordering::Release);
        Busy(flag.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a connection (the newest) that holds `permit` until it ends.
    pub fn register<P>(self: &Arc<Self>, permit: P) -> Registered<P> {
        let (tx, rx) = oneshot::channel();
        let busy = Arc::new(AtomicBool::new(false));
        let evict = CancellationToken::new();
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.live.push_back(Slot {
            id,
            busy: busy.clone(),
            evict: evict.clone(),
            gone: rx,
        });
        Registered {
            registry: self.clone(),
            id,
            busy,
            evicted: evict,
            _permit: permit,
            _gone: tx,
        }
    }

    /// Tells the oldest connection not answering a request to close, and returns
    /// what resolves once it has; `None` when every connection is busy.
    pub fn evict_oldest_idle(&self) -> Option<oneshot::Receiver<()>> {
        let mut inner = self.lock();
        let at = inner
            .live
            .iter()
            .position(|s| !s.busy.load(Ordering::Acquire))?;
        let slot = inner.live.remove(at)?;
        slot.evict.cancel();
        Some(slot.gone)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().live.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_idle_connection_goes_first_busy_ones_never() {
        let registry = Arc::new(Registry::default());
        let first = registry.register(());
        let second = registry.register(());
        let third = registry.register(());
        let _busy = Busy::new(&first.busy);

        // The oldest, `first`, is answering a request: `second` goes.
        let gone = registry.evict_oldest_idle().expect("an idle connection");
        assert!(!first.evicted.is_cancelled());
        assert!(second.evicted.is_cancelled());
        assert!(!third.evicted.is_cancelled());
        assert_eq!(registry.len(), 2);
        // Its slot is free once its task has dropped its registration.
        let mut gone = gone;
        assert!(gone
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Empty));
        drop(second);
        assert!(gone
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Closed));

        // Then `third`; `first` never while it is busy.
        registry.evict_oldest_idle().expect("an idle connection");
        assert!(third.evicted.is_cancelled());
        assert!(!first.evicted.is_cancelled());
        drop(third);
        assert_eq!(registry.len(), 1);
    }

    #[test]
    fn none_goes_when_every_connection_is_busy() {
        let registry = Arc::new(Registry::default());
        let a = registry.register(());
        let b = registry.register(());
        let busy = (Busy::new(&a.busy), Busy::new(&b.busy));
        assert!(registry.evict_oldest_idle().is_none());
        assert!(!a.evicted.is_cancelled() && !b.evicted.is_cancelled());
        // Once an answer is sent, that connection is idle again and may go.
        drop(busy.1);
        registry.evict_oldest_idle().expect("b is idle");
        assert!(b.evicted.is_cancelled() && !a.evicted.is_cancelled());
        drop(busy.0);
        drop(b);
        registry.evict_oldest_idle().expect("a is idle");
        assert!(a.evicted.is_cancelled());
        drop(a);
        assert_eq!(registry.len(), 0);
        assert!(registry.evict_oldest_idle().is_none());
    }

    #[test]
    fn the_permit_is_back_before_the_slot_is_said_free() {
        let registry = Arc::new(Registry::default());
        let limit = crate::limit::ConnectionLimit::new(1);
        let entry = registry.register(limit.try_acquire().unwrap());
        assert!(limit.try_acquire().is_none());
        let mut gone = registry.evict_oldest_idle().unwrap();
        drop(entry);
        assert!(gone.try_recv().is_err());
        assert_eq!(limit.open(), 0);
    }
}
