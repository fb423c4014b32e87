//! Route templates a non-axum service declares, matched against the request path.

use std::sync::Arc;

use crate::error::MetricsError;

/// The route templates of a service, so the `route` label is a template (`/users/{id}`) and
/// never a raw path (`/users/42`).
///
/// The syntax is axum's: `{name}` matches one path segment, `{*name}` the rest of the path,
/// and a literal segment wins over a parameter (`/users/me` before `/users/{id}`).
///
/// ```
/// use periscope_metrics::RouteTemplates;
///
/// let routes = RouteTemplates::new(["/users/{id}", "/users/me", "/static/{*path}"]).unwrap();
/// assert_eq!(routes.find("/users/42"), Some("/users/{id}"));
/// assert_eq!(routes.find("/users/me"), Some("/users/me"));
/// assert_eq!(routes.find("/static/css/site.css"), Some("/static/{*path}"));
/// assert_eq!(routes.find("/admin"), None);
/// ```
#[derive(Clone, Default)]
pub struct RouteTemplates {
    router: matchit::Router<Arc<str>>,
    templates: Vec<Arc<str>>,
}

impl RouteTemplates {
    /// Compiles `templates`; fails on a malformed template or two that conflict.
    pub fn new<I, T>(templates: I) -> Result<Self, MetricsError>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        let mut routes = Self::default();
        for template in templates {
            routes.add(template.as_ref())?;
        }
        Ok(routes)
    }

    /// Adds one template.
    pub fn add(&mut self, template: &str) -> Result<(), MetricsError> {
        let shared: Arc<str> = Arc::from(template);
        self.router
            .insert(template, shared.clone())
            .map_err(|source| MetricsError::RouteTemplate {
                template: template.to_owned(),
                reason: source.to_string(),
            })?;
        self.templates.push(shared);
        Ok(())
    }

    /// The template that matches `path`, if any.
    pub fn find(&self, path: &str) -> Option<&str> {
        self.router.at(path).ok().map(|found| &**found.value)
    }

    /// The declared templates, in declaration order.
    pub fn templates(&self) -> impl Iterator<Item = &str> {
        self.templates.iter().map(|template| &**template)
    }

    /// How many templates are declared.
    pub fn len(&self) -> usize {
        self.templates.len()
    }

    /// Whether no template is declared.
    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }
}

impl std::fmt::Debug for RouteTemplates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.templates()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_match_one_segment_and_wildcards_the_rest() {
        let routes =
            RouteTemplates::new(["/jobs/{job_id}/cancel", "/jobs/{job_id}", "/files/{*path}"])
                .unwrap();
        assert_eq!(routes.find("/jobs/7/cancel"), Some("/jobs/{job_id}/cancel"));
        assert_eq!(routes.find("/jobs/7"), Some("/jobs/{job_id}"));
        assert_eq!(routes.find("/jobs/7/other"), None);
        assert_eq!(routes.find("/files/a/b/c"), Some("/files/{*path}"));
        assert_eq!(routes.find("/jobs/"), None);
        assert_eq!(routes.find(""), None);
        assert_eq!(routes.len(), 3);
    }

    #[test]
    fn conflicting_or_malformed_templates_are_rejected_with_the_template_named() {
        let err = RouteTemplates::new(["/users/{id}", "/users/{name}"]).unwrap_err();
        assert!(err.to_string().contains("/users/{name}"), "{err}");
        assert!(RouteTemplates::new(["/users/{id"]).is_err());
    }
}
