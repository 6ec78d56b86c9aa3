//! Background work, declared by each service as a list of [`Task`]s (`tasks()` next to
//! its `routes()`) and started by the binary ([`start`]), never as a side effect of
//! building a router. Every task stops when the process's shutdown token is cancelled;
//! the binary waits for them before it exits.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::hooks::BoxFuture;

type Tick = Box<dyn FnMut() -> BoxFuture<'static, anyhow::Result<()>> + Send>;

/// One piece of background work of a service.
pub struct Task {
    /// Names it in logs (`task=…`).
    pub name: &'static str,
    run: Run,
}

enum Run {
    Periodic { every: Duration, tick: Tick },
    Loop(Box<dyn FnOnce(CancellationToken) -> BoxFuture<'static, ()> + Send>),
}

impl Task {
    /// Runs `tick` at once and then every `every` until shutdown. A tick that fails is
    /// logged and the next one comes on time; ticks never overlap.
    pub fn periodic<F, Fut>(name: &'static str, every: Duration, mut tick: F) -> Self
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        Self {
            name,
            run: Run::Periodic {
                every,
                tick: Box::new(move || Box::pin(tick())),
            },
        }
    }

    /// A loop of its own (one that waits for notifications, say), which must return
    /// soon after the token it is given is cancelled.
    pub fn looping<F, Fut>(name: &'static str, run: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self {
            name,
            run: Run::Loop(Box::new(move |stop| Box::pin(run(stop)))),
        }
    }

    async fn run(self, stop: CancellationToken) {
        match self.run {
            Run::Periodic { every, mut tick } => {
                let mut interval = tokio::time::interval(every);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        _ = interval.tick() => {}
                    }
                    let result = tokio::select! {
                        () = stop.cancelled() => break,
                        r = tick() => r,
                    };
                    if let Err(e) = result {
                        tracing::warn!(task = self.name, error = %format!("{e:#}"), "background task failed; it runs again at its next tick");
                    }
                }
            }
            Run::Loop(run) => run(stop).await,
        }
        tracing::debug!(task = self.name, "background task stopped");
    }
}

/// Starts `tasks`, each stopping when `shutdown` is cancelled. Await the set (after
/// cancelling) to know they have stopped.
pub fn start(tasks: Vec<Task>, shutdown: &CancellationToken) -> JoinSet<()> {
    let mut set = JoinSet::new();
    for task in tasks {
        set.spawn(task.run(shutdown.child_token()));
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn periodic_tasks_tick_again_after_a_failure_and_stop_on_shutdown() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut n = 0;
        let task = Task::periodic("test", Duration::from_millis(1), move || {
            n += 1;
            let (tx, tick) = (tx.clone(), n);
            async move {
                let _ = tx.send(tick);
                if tick == 2 {
                    anyhow::bail!("the second tick fails");
                }
                Ok(())
            }
        });
        let shutdown = CancellationToken::new();
        let mut set = start(vec![task], &shutdown);
        // The tick after the failed one comes.
        for want in 1..=3 {
            assert_eq!(rx.recv().await, Some(want));
        }
        shutdown.cancel();
        assert!(set.join_next().await.is_some_and(|r| r.is_ok()));
        // Stopped: the task (and its sender) is gone; nothing more comes.
        while let Ok(tick) = rx.try_recv() {
            assert!(tick > 3);
        }
        assert!(rx.recv().await.is_none());
    }
}
