//! The drain's count of lifecycles in flight ([`InFlight`]), kept in
//! per-thread shards so that requests on different threads never write the
//! same cache line.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// How many shards: more than the worker threads of most servers; a thread
/// takes one in turn, so two threads share one only past this many.
const SHARDS: usize = 16;

/// One shard's count, alone on its cache line.
#[derive(Default)]
#[repr(align(128))]
struct Shard(AtomicUsize);

/// Lifecycles in flight: each enters the shard of the thread it starts on
/// and leaves the same shard (wherever it ends), so no shard ever goes below
/// zero and a sum read while lifecycles come and go is never below the
/// number that were in flight for the whole read.
#[derive(Default)]
pub(crate) struct InFlight {
    shards: [Shard; SHARDS],
    /// Someone waits for the count to reach zero ([`InFlight::wait`]): from
    /// then on, each leave checks the sum.
    waiting: AtomicBool,
    zero: Notify,
}

/// The shard of the current thread, taken in turn when it first counts.
#[inline]
fn shard_of_this_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|shard| *shard)
}

impl InFlight {
    /// Counts a lifecycle in; returns its shard, for [`leave`](Self::leave).
    #[inline]
    pub(crate) fn enter(&self) -> u8 {
        let shard = shard_of_this_thread();
        // Relaxed: nothing is published by entering; a waiter only needs
        // to see leaves (below).
        self.shards[shard].0.fetch_add(1, Ordering::Relaxed);
        shard as u8
    }

    /// Counts a lifecycle out of `shard`.
    pub(crate) fn leave(&self, shard: u8) {
        // SeqCst, with the SeqCst store of `waiting` in `wait`: either the
        // waiter's sum sees this leave, or this load sees it waiting and
        // wakes it (the store-then-load pattern needs a total order). It
        // also releases what the lifecycle did to whoever sees it gone.
        self.shards[usize::from(shard)]
            .0
            .fetch_sub(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) && self.len() == 0 {
            self.zero.notify_waiters();
        }
    }

    /// How many are in flight.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.0.load(Ordering::SeqCst))
            .sum()
    }

    /// Resolves once none is in flight, at once if none is.
    pub(crate) async fn wait(&self) {
        self.waiting.store(true, Ordering::SeqCst);
        loop {
            let zero = self.zero.notified();
            tokio::pin!(zero);
            // Registered before the count is read: a leave in between
            // wakes it.
            zero.as_mut().enable();
            if self.len() == 0 {
                return;
            }
            zero.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::InFlight;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn counts_across_threads_and_wakes_the_waiter_at_zero() {
        let count = Arc::new(InFlight::default());
        let shards: Vec<u8> = (0..3).map(|_| count.enter()).collect();
        // One entered on another thread, on that thread's shard.
        let other = {
            let count = count.clone();
            std::thread::spawn(move || count.enter()).join().unwrap()
        };
        assert_eq!(count.len(), 4);
        let waiter = tokio::spawn({
            let count = count.clone();
            async move { count.wait().await }
        });
        for shard in shards {
            count.leave(shard);
        }
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one is still in flight");
        // It leaves from yet another thread, on the shard it entered.
        let leaver = count.clone();
        std::thread::spawn(move || leaver.leave(other))
            .join()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken at zero")
            .unwrap();
        assert_eq!(count.len(), 0);
        tokio::time::timeout(Duration::from_secs(5), count.wait())
            .await
            .expect("at once when none is in flight");
    }
}
