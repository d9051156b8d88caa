//! What cuts open connections at the drain deadline, cheap to wait on.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Poll, Waker};
use tokio_util::sync::CancellationToken;

/// What cuts open connections at the drain deadline: one per worker thread.
#[derive(Default)]
pub struct Cut {
    /// Set before the token is cancelled: what a connection looks at when woken.
    cut: AtomicBool,
    token: CancellationToken,
}

impl Cut {
    /// Ends every connection waiting on [`Cut::cancelled`].
    pub fn cancel(&self) {
        self.cut.store(true, Ordering::Release);
        self.token.cancel();
    }

    /// Completes once [`Cut::cancel`] is called. A `select!` polls this each time
    /// any of its branches is woken (each time bytes move): the token, whose every
    /// look takes its lock, is polled only on the first poll (to register the
    /// task's waker) and when the waker changes; otherwise it is one atomic load.
    ///
    /// The token's future is made here, not passed in: moved into this future,
    /// it would take its room twice in every connection's task.
    pub async fn cancelled(&self) {
        let wait = self.token.cancelled();
        tokio::pin!(wait);
        let mut registered: Option<Waker> = None;
        std::future::poll_fn(|cx| {
            if self.cut.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            if registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                return Poll::Pending;
            }
            let poll = wait.as_mut().poll(cx);
            if poll.is_pending() {
                registered = Some(cx.waker().clone());
            }
            poll
        })
        .await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cut_ends_the_waits_already_registered_and_later_ones() {
        let cut = std::sync::Arc::new(Cut::default());
        let waiting = tokio::spawn({
            let cut = cut.clone();
            async move { cut.cancelled().await }
        });
        // Polled a few times (registered, then the cheap path), still waiting.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished());
        cut.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the cut ends the wait")
            .unwrap();
        // After the cut, a new wait ends at once.
        tokio::time::timeout(std::time::Duration::from_secs(5), cut.cancelled())
            .await
            .expect("a wait after the cut ends at once");
    }
}
