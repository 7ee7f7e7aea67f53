//! A background thread that runs a task periodically, used for `Durability::Buffered`.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

/// Runs a closure every `interval` on a named thread until stopped or dropped.
///
/// The closure returns `false` to end the loop (e.g. once the backend it serves is gone).
/// Stopping joins the thread, so after [`stop`](PeriodicTask::stop) returns the closure is
/// not running and will not run again.
#[derive(Debug)]
pub struct PeriodicTask {
    stop: Option<mpsc::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl PeriodicTask {
    /// Spawns the thread.
    pub fn spawn<F>(name: &str, interval: Duration, mut task: F) -> std::io::Result<Self>
    where
        F: FnMut() -> bool + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<()>();
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || loop {
                match rx.recv_timeout(interval) {
                    Err(RecvTimeoutError::Timeout) => {
                        if !task() {
                            return;
                        }
                    }
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
            })?;
        Ok(PeriodicTask {
            stop: Some(tx),
            handle: Some(handle),
        })
    }

    /// Stops the thread and waits for it. Idempotent.
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            // The receiver may already be gone if the task ended itself.
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            if h.thread().id() != std::thread::current().id() {
                // A panic in the task has already been reported by the panic hook.
                let _ = h.join();
            }
        }
    }
}

impl Drop for PeriodicTask {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn runs_until_stopped_and_never_after() {
        let n = Arc::new(AtomicUsize::new(0));
        let m = n.clone();
        let mut t = PeriodicTask::spawn("t", Duration::from_millis(1), move || {
            m.fetch_add(1, Ordering::SeqCst);
            true
        })
        .unwrap();
        while n.load(Ordering::SeqCst) < 3 {
            std::thread::yield_now();
        }
        t.stop();
        let after = n.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(n.load(Ordering::SeqCst), after);
    }

    #[test]
    fn task_returning_false_ends_the_thread() {
        let n = Arc::new(AtomicUsize::new(0));
        let m = n.clone();
        let mut t = PeriodicTask::spawn("t", Duration::from_millis(1), move || {
            m.fetch_add(1, Ordering::SeqCst);
            false
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(30));
        t.stop();
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }
}
