//! An axum `Router` serving the probes (feature `axum`).

use crate::health::Health;
use crate::render::Probe;

impl Health {
    /// A `Router` answering `GET /health`, `/ready` and `/startup`; merge it into the app's
    /// router (`app.merge(health.router())`). For other paths, mount
    /// [`Health::probe_service`] with `Router::route_service`.
    ///
    /// ```
    /// use periscope_health::Health;
    ///
    /// # fn main() -> Result<(), periscope_health::BuildError> {
    /// let health = Health::builder().check("db", || async { Ok::<_, String>(()) }).build()?;
    /// let app: axum::Router = axum::Router::new().merge(health.router());
    /// # let _ = app;
    /// # Ok(())
    /// # }
    /// ```
    pub fn router<S>(&self) -> axum::Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        axum::Router::new()
            .route_service("/health", self.probe_service(Probe::Liveness))
            .route_service("/ready", self.probe_service(Probe::Readiness))
            .route_service("/startup", self.probe_service(Probe::Startup))
    }
}
