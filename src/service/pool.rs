//! A bounded pool for blocking CPU work, with load shedding and deadlines.
//!
//! Admission is a semaphore of `workers + queue` slots: a request that finds it
//! full is refused at once (RESOURCE_EXHAUSTED), so overload never grows an
//! unbounded queue. An admitted request waits for one of `workers` permits, but
//! only until its deadline (DEADLINE_EXCEEDED), then runs on tokio's blocking
//! threads. A panic in the work becomes INTERNAL for that request alone.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;
use tonic::Status;

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct WorkPool {
    admission: Arc<Semaphore>,
    workers: Arc<Semaphore>,
    queue: usize,
}

impl WorkPool {
    pub fn new(workers: usize, queue: usize) -> Self {
        let workers = workers.max(1);
        WorkPool {
            admission: Arc::new(Semaphore::new(workers + queue)),
            workers: Arc::new(Semaphore::new(workers)),
            queue,
        }
    }

    /// Runs `job` on a worker, refusing at once when the queue is full.
    pub async fn run<T, F>(&self, deadline: Option<Instant>, job: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let slot = self.admission.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "server busy: {} requests already waiting; retry later",
                self.queue
            ))
        })?;
        self.execute(slot, deadline, job).await
    }

    /// Like [`run`](Self::run) but waits (until the deadline) for a queue slot:
    /// streams use it so that a fast client is slowed down rather than refused.
    pub async fn run_waiting<T, F>(&self, deadline: Option<Instant>, job: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let slot = until(
            deadline,
            self.admission.clone().acquire_owned(),
            "a queue slot",
        )
        .await?
        .map_err(|_| Status::unavailable("server shutting down"))?;
        self.execute(slot, deadline, job).await
    }

    async fn execute<T, F>(
        &self,
        slot: tokio::sync::OwnedSemaphorePermit,
        deadline: Option<Instant>,
        job: F,
    ) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let worker = until(deadline, self.workers.clone().acquire_owned(), "a worker")
            .await?
            .map_err(|_| Status::unavailable("server shutting down"))?;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Status::deadline_exceeded(
                "deadline passed before work started",
            ));
        }
        let handle = tokio::task::spawn_blocking(move || {
            // Both permits are held until the work is done, even if the client
            // has gone: the CPU is busy either way.
            let _held = (slot, worker);
            job()
        });
        match until(deadline, handle, "the work to finish").await? {
            Ok(value) => Ok(value),
            Err(e) if e.is_panic() => {
                let reason = e
                    .into_panic()
                    .downcast::<String>()
                    .map(|s| *s)
                    .or_else(|p| p.downcast::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|_| "unknown".to_owned());
                tracing::error!(%reason, "request panicked");
                Err(Status::internal(format!("request failed: {reason}")))
            }
            Err(_) => Err(Status::unavailable("server shutting down")),
        }
    }
}

/// Awaits `future` until `deadline` (if any).
async fn until<F: std::future::Future>(
    deadline: Option<Instant>,
    future: F,
    what: &str,
) -> Result<F::Output, Status> {
    match deadline {
        None => Ok(future.await),
        Some(d) => tokio::time::timeout_at(d.into(), future)
            .await
            .map_err(|_| Status::deadline_exceeded(format!("deadline passed waiting for {what}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_sheds_load_at_once() {
        let pool = WorkPool::new(1, 1);
        let gate = Arc::new(std::sync::Barrier::new(2));
        let busy = {
            let (pool, gate) = (pool.clone(), gate.clone());
            tokio::spawn(async move { pool.run(None, move || gate.wait()).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let queued = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.run(None, || 7).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let refused = pool.run(None, || 0).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        gate.wait();
        busy.await.unwrap().unwrap();
        assert_eq!(queued.await.unwrap().unwrap(), 7);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deadlines_and_panics_become_statuses() {
        let pool = WorkPool::new(1, 4);
        let soon = Some(Instant::now() + Duration::from_millis(30));
        let slow = pool
            .run(soon, || std::thread::sleep(Duration::from_millis(300)))
            .await
            .unwrap_err();
        assert_eq!(slow.code(), tonic::Code::DeadlineExceeded);
        let panicked = pool
            .run(None, || -> u8 { panic!("boom") })
            .await
            .unwrap_err();
        assert_eq!(panicked.code(), tonic::Code::Internal);
        assert!(panicked.message().contains("boom"));
        assert_eq!(pool.run(None, || 5).await.unwrap(), 5, "the pool survives");
    }
}
