//! The real-time tick that drives the engine's periodic work; every rule
//! inside decides by the injected clock (`keyfed_engine::tick`).
use crate::node::Node;
use tokio_util::sync::CancellationToken;

pub async fn run(node: Node, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(
        node.config.tick_millis.max(10),
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = node.engine.tick().await {
            tracing::warn!(node = %node.id(), error = %e, "scheduled work failed; retried next tick");
        }
    }
}
