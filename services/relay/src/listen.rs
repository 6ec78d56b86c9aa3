//! The one way this service follows PostgreSQL notification channels (one connection for
//! all of a follower's channels): hints on a channel name a printer; a sweep after every (re)connection and every `every` catches
//! whatever was hinted while nobody listened, or whose hint was lost. A lost connection
//! is reconnected after a pause.

use std::time::Duration;

use printworks_common::AppContext;
use sqlx::postgres::PgListener;
use tokio::time::Interval;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long to wait before connecting again after a failure.
const RETRY: Duration = Duration::from_secs(1);

/// What the follower should do next.
pub enum Next {
    /// Look for everything that may have been missed.
    Sweep,
    /// A notification on the follower's `channels[i]`: the printer it names (`None` if
    /// the payload is not one).
    Hint(usize, Option<Uuid>),
}

pub struct Follower<'a> {
    ctx: &'a AppContext,
    /// Names the follower in logs.
    what: &'static str,
    channels: &'a [&'a str],
    every: Duration,
    stop: &'a CancellationToken,
    listening: Option<(PgListener, Interval)>,
}

impl<'a> Follower<'a> {
    pub fn new(
        ctx: &'a AppContext,
        what: &'static str,
        channels: &'a [&'a str],
        every: Duration,
        stop: &'a CancellationToken,
    ) -> Self {
        Self {
            ctx,
            what,
            channels,
            every,
            stop,
            listening: None,
        }
    }

    /// The next thing to do, or `None` once `stop` is cancelled.
    pub async fn next(&mut self) -> Option<Next> {
        loop {
            let Some((listener, tick)) = &mut self.listening else {
                match self.connect().await {
                    Ok(l) => {
                        let mut tick = tokio::time::interval(self.every);
                        tick.reset();
                        self.listening = Some((l, tick));
                        return Some(Next::Sweep);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, what = self.what, "cannot listen; retrying");
                        tokio::select! {
                            () = self.stop.cancelled() => return None,
                            () = tokio::time::sleep(RETRY) => continue,
                        }
                    }
                }
            };
            tokio::select! {
                () = self.stop.cancelled() => return None,
                _ = tick.tick() => return Some(Next::Sweep),
                n = listener.recv() => match n {
                    Ok(n) => {
                        let Some(i) = self.channels.iter().position(|c| *c == n.channel()) else {
                            continue;
                        };
                        return Some(Next::Hint(i, Uuid::parse_str(n.payload()).ok()));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, what = self.what, "lost the listening connection; reconnecting");
                        self.listening = None;
                    }
                },
            }
        }
    }

    async fn connect(&self) -> sqlx::Result<PgListener> {
        let mut l = PgListener::connect_with(&self.ctx.db).await?;
        l.listen_all(self.channels.iter().copied()).await?;
        Ok(l)
    }
}
