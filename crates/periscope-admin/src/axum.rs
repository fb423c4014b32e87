//! An axum `Router` of exactly the admin paths (feature `axum`).

use crate::endpoint::DEBUG_PREFIX;
use crate::service::Admin;

impl Admin {
    /// A `Router` routing exactly the paths this admin service answers (see
    /// [`Admin::endpoints`]) to it, every method included, so that wrong methods get the
    /// admin's 405 envelope. Merge it into an app: `app.merge(admin.router())`. Paths it does
    /// not serve (debug endpoints while disabled, `/metrics` without a registry) are left to
    /// the app. While debug access is on, the router also takes `/debug/` and every other
    /// path under it (a catch-all, below any exact route of the app; an app's own `/debug/`
    /// route conflicts with it), so that a caller without the token gets 401 everywhere there
    /// and cannot map the debug endpoints; `/debug` itself, like any path the admin does not
    /// serve, stays with the app.
    ///
    /// ```
    /// use periscope_admin::Admin;
    ///
    /// let admin = Admin::builder().service_info("api", "1.0.0", "dev").build();
    /// let app: axum::Router = axum::Router::new()
    ///     .route("/", axum::routing::get(|| async { "hello" }))
    ///     .merge(admin.router());
    /// # let _ = app;
    /// ```
    pub fn router<S>(&self) -> axum::Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let router = self
            .endpoints()
            .fold(axum::Router::new(), |router, endpoint| {
                router.route_service(endpoint.path(), self.clone())
            });
        if self.debug_enabled() {
            // A catch-all never matches an empty rest, so `/debug/` needs its own route: it
            // is a debug path too, and asks for the token like the others.
            router
                .route_service(DEBUG_PREFIX, self.clone())
                .route_service("/debug/{*rest}", self.clone())
        } else {
            router
        }
    }
}
