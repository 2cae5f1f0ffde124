//! The node's shell state: the engine plus what only the shell has (its full
//! config, the open federation links, the metrics registry).
use crate::config::NodeConfig;
use crate::links::Links;
use crate::metrics::Metrics;
use keyfed_engine::Engine;
use std::sync::Arc;

/// A cheap handle the services, links and tasks of one node share.
#[derive(Clone)]
pub struct Node(Arc<NodeParts>);

pub struct NodeParts {
    pub engine: Engine,
    pub config: NodeConfig,
    /// b06: counters behind `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The open federation link of each peer (at most one).
    pub links: Links,
    /// The configured webhooks and their delivery state.
    pub webhooks: crate::webhooks::Webhooks,
}

impl std::ops::Deref for Node {
    type Target = NodeParts;
    fn deref(&self) -> &NodeParts {
        &self.0
    }
}

impl Node {
    #[must_use]
    pub fn new(
        engine: Engine,
        config: NodeConfig,
        metrics: Arc<Metrics>,
        webhooks: crate::webhooks::Webhooks,
    ) -> Self {
        Self(Arc::new(NodeParts {
            engine,
            config,
            metrics,
            links: Links::default(),
            webhooks,
        }))
    }

    #[must_use]
    pub fn id(&self) -> &str {
        &self.config.node_id
    }
}
