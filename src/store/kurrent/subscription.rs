//! The catch-up subscription to `$all` that keeps a node's projections fresh:
//! filtered to our streams by prefix, started from the projections' checkpoint
//! (stored with the projections, in the same transaction as their rows), it
//! wakes the tailer on every event. The tailer reads the feed from the
//! checkpoint and applies it, so an event is applied once however it arrived,
//! and the tailer's polling covers the moments without a subscription.

use std::sync::Arc;
use std::time::Duration;

use kurrentdb::{Client, SubscribeToAllOptions, SubscriptionEvent, SubscriptionFilter};
use tokio_util::sync::CancellationToken;

use crate::store::backend::FeedListener;
use crate::store::kurrent::codec::{feed_position, read_from};

/// Pause before resubscribing after the subscription failed.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(1);

/// Wakes the listener on every new event of ours until cancelled;
/// resubscribes by itself from the last event it saw.
pub async fn listen(
    client: Client,
    prefix: String,
    tailer: Arc<dyn FeedListener>,
    stop: CancellationToken,
) {
    let mut from = None;
    loop {
        let start = match from {
            Some(p) => p,
            None => match tailer.resume_position().await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the projection checkpoint; retrying");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(RESUBSCRIBE_AFTER) => continue,
                    }
                }
            },
        };
        let options = SubscribeToAllOptions::default()
            .position(read_from(start))
            .filter(SubscriptionFilter::on_stream_name().add_prefix(&prefix));
        let mut subscription = client.subscribe_to_all(&options).await;
        loop {
            let event = tokio::select! {
                () = stop.cancelled() => return,
                event = subscription.next_subscription_event() => event,
            };
            match event {
                Ok(SubscriptionEvent::EventAppeared(resolved)) => {
                    if let Some(p) = resolved
                        .event
                        .as_ref()
                        .and_then(|e| feed_position(e.position).ok())
                    {
                        from = Some(p);
                    }
                    tailer.wake();
                }
                // Caught up with the head, or a new live phase: whatever arrived
                // meanwhile is read by the tailer from its checkpoint.
                Ok(SubscriptionEvent::CaughtUp(_) | SubscriptionEvent::Confirmed(_)) => {
                    tailer.wake();
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "KurrentDB subscription failed; resubscribing");
                    tailer.wake();
                    break;
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(RESUBSCRIBE_AFTER) => {}
        }
    }
}
