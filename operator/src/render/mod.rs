//! What the operator writes into the cluster, as pure functions of the
//! resources and the operator's settings: the Envoy bootstrap, and for an
//! McpServer its Deployment, ConfigMap, Service and NetworkPolicy, and the
//! sidecar injected into the pods a selector names. Unit tests check the
//! output; the controllers and the webhook only apply it.

pub mod envoy;
pub mod hardening;
pub mod injection;
pub mod workload;
