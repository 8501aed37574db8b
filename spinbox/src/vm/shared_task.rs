//! [`SharedTask`]: work that runs at most once, on its own task, with every caller — first,
//! concurrent or later — getting the same result. Used for shutdowns, which must finish even
//! if the caller that started them is cancelled.

use std::future::Future;
use std::sync::{Mutex, PoisonError};
use tokio::sync::watch;

/// Runs its work once; see the module docs.
#[derive(Debug)]
pub struct SharedTask<T> {
    result: Mutex<Option<watch::Receiver<Option<T>>>>,
}

impl<T> Default for SharedTask<T> {
    fn default() -> Self {
        Self {
            result: Mutex::new(None),
        }
    }
}

impl<T: Clone + Send + Sync + 'static> SharedTask<T> {
    /// Starts `work` on a tokio task unless an earlier call did, then waits for its result.
    /// `lost` gives the result if the task ended without publishing one (it panicked).
    pub async fn run<W, F>(&self, work: W, lost: impl FnOnce() -> T) -> T
    where
        W: FnOnce() -> F,
        F: Future<Output = T> + Send + 'static,
    {
        let mut rx = {
            let mut slot = self.result.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(rx) = slot.as_ref() {
                rx.clone()
            } else {
                let (tx, rx) = watch::channel(None);
                *slot = Some(rx.clone());
                let work = work();
                tokio::spawn(async move {
                    let _ = tx.send(Some(work.await));
                });
                rx
            }
        };
        loop {
            if let Some(result) = rx.borrow_and_update().as_ref() {
                return result.clone();
            }
            if rx.changed().await.is_err() {
                return rx.borrow().clone().unwrap_or_else(lost);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SharedTask;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_once_and_everyone_gets_the_result() {
        let task = Arc::new(SharedTask::<u32>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let callers: Vec<_> = (0..8)
            .map(|_| {
                let (task, runs) = (task.clone(), runs.clone());
                tokio::spawn(async move {
                    task.run(
                        || async move {
                            runs.fetch_add(1, Ordering::SeqCst);
                            tokio::task::yield_now().await;
                            7
                        },
                        || 0,
                    )
                    .await
                })
            })
            .collect();
        for caller in callers {
            assert_eq!(caller.await.unwrap(), 7);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(task.run(|| async { 9 }, || 0).await, 7, "later callers too");
    }

    #[tokio::test]
    async fn a_panicking_task_yields_the_lost_result() {
        let task = SharedTask::<u32>::default();
        let result = task.run(|| async { panic!("boom") }, || 42).await;
        assert_eq!(result, 42);
    }
}
