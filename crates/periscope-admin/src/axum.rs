//! An axum `Router` of exactly the admin paths (feature `axum`).

use crate::service::Admin;

impl Admin {
    /// A `Router` routing exactly the paths this admin service answers (see
    /// [`Admin::endpoints`]) to it, every method included, so that wrong methods get the
    /// admin's 405 envelope. Merge it into an app: `app.merge(admin.router())`. Paths it does
    /// not serve (debug endpoints while disabled, `/metrics` without a registry) are left to
    /// the app.
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
        self.endpoints()
            .fold(axum::Router::new(), |router, endpoint| {
                router.route_service(endpoint.path(), self.clone())
            })
    }
}
