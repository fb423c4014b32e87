//! Route templates a service without axum declares, matched against the request path, and the
//! matched route shared by every layer through the request's extensions.

use std::sync::Arc;

use http::Extensions;

/// The route templates of a service, so span names, access lines and the `route` label say
/// `/users/{id}` and never a raw path (`/users/42`). axum services need none: its matched route
/// (`MatchedPath`) is used first.
///
/// The syntax is axum's: `{name}` matches one path segment, `{*name}` the rest of the path,
/// and a literal segment wins over a parameter (`/users/me` before `/users/{id}`).
///
/// ```
/// use periscope_context::RouteTemplates;
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
    /// Compiles `templates`; fails on a malformed template (one not starting with `/` included)
    /// or two that conflict.
    pub fn new<I, T>(templates: I) -> Result<Self, RouteTemplateError>
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

    /// Adds one template. It must start with `/`, as every request path does, and use axum
    /// 0.8's syntax: a segment starting with `:` or `*` (axum 0.7's `/users/:id`) is refused.
    pub fn add(&mut self, template: &str) -> Result<(), RouteTemplateError> {
        // The matcher takes `users/{id}` happily, and it would then never match a request.
        if !template.starts_with('/') {
            return Err(RouteTemplateError {
                template: template.to_owned(),
                reason: "a template must start with '/', as request paths do".to_owned(),
            });
        }
        // axum 0.7's `:id` and `*rest` are literal text to the matcher: such a template would
        // never match either. axum 0.8 refuses them as well.
        if template
            .split('/')
            .any(|segment| segment.starts_with(':') || segment.starts_with('*'))
        {
            return Err(RouteTemplateError {
                template: template.to_owned(),
                reason: "a segment starts with ':' or '*' (axum 0.7's syntax): write `{id}` \
                         for a parameter and `{*rest}` for the rest of the path"
                    .to_owned(),
            });
        }
        let shared: Arc<str> = Arc::from(template);
        self.router
            .insert(template, shared.clone())
            .map_err(|source| RouteTemplateError {
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

    /// The template that matches `path`, ready for the request's extensions (shared, not
    /// copied).
    pub fn matched(&self, path: &str) -> Option<MatchedRoute> {
        let found = self.router.at(path).ok()?;
        Some(MatchedRoute(found.value.clone()))
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

/// A route template that is malformed or conflicts with one declared before.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid route template {template:?}: {reason}")]
pub struct RouteTemplateError {
    /// The template.
    pub template: String,
    /// What the matcher reported.
    pub reason: String,
}

/// The route template a request matched, put in its extensions by the first layer that finds it
/// (the server layer, from its [`RouteTemplates`]), so the layers inside it (metrics, access
/// log) agree on the route without matching again. axum's `MatchedPath`, when present, comes
/// first everywhere. A template match names the route a path belongs to, not that a handler
/// serves it: the error layer tells a router's 404 (`route_not_found`) only by `MatchedPath`.
///
/// ```
/// use periscope_context::{MatchedRoute, RouteTemplates};
///
/// let routes = RouteTemplates::new(["/users/{id}"]).unwrap();
/// let mut request = http::Request::new(());
/// *request.uri_mut() = "/users/42".parse().unwrap();
/// if let Some(route) = routes.matched(request.uri().path()) {
///     request.extensions_mut().insert(route);
/// }
/// assert_eq!(MatchedRoute::of(request.extensions()), Some("/users/{id}"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatchedRoute(Arc<str>);

impl MatchedRoute {
    /// A matched route template.
    pub fn new(template: impl Into<Arc<str>>) -> Self {
        Self(template.into())
    }

    /// The template.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The template in `extensions`, if a layer put one there.
    pub fn of(extensions: &Extensions) -> Option<&str> {
        extensions.get::<Self>().map(Self::as_str)
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
        assert_eq!(
            routes.matched("/jobs/7").as_ref().map(MatchedRoute::as_str),
            Some("/jobs/{job_id}")
        );
        assert_eq!(routes.matched("/nope"), None);
    }

    #[test]
    fn conflicting_or_malformed_templates_are_rejected_with_the_template_named() {
        let err = RouteTemplates::new(["/users/{id}", "/users/{name}"]).unwrap_err();
        assert!(err.to_string().contains("/users/{name}"), "{err}");
        assert!(RouteTemplates::new(["/users/{id"]).is_err());
    }

    /// axum 0.7's syntax is literal text to the matcher, so such a template could never match.
    #[test]
    fn axum_07_parameters_are_refused_with_the_syntax_to_use() {
        for template in ["/users/:id", "/static/*path", "/a/:b/c"] {
            let err = RouteTemplates::new([template]).unwrap_err();
            assert_eq!(err.template, template);
            assert!(err.to_string().contains("`{id}`"), "{err}");
        }
        // Inside a segment, `:` and `*` are ordinary characters.
        let routes = RouteTemplates::new(["/v1/models:list", "/files/a*b"]).unwrap();
        assert_eq!(routes.find("/v1/models:list"), Some("/v1/models:list"));
        assert_eq!(routes.find("/files/a*b"), Some("/files/a*b"));
    }

    /// A template without the leading `/` could never match a request path: refused up front
    /// rather than leaving the route unmatched forever.
    #[test]
    fn templates_must_start_with_a_slash() {
        for template in ["users/{id}", "", "{*path}", " /users"] {
            let err = RouteTemplates::new([template]).unwrap_err();
            assert_eq!(err.template, template);
            assert!(err.to_string().contains("start with '/'"), "{err}");
        }
        let routes = RouteTemplates::new(["/", "/{*path}"]).unwrap();
        assert_eq!(routes.find("/"), Some("/"));
        assert_eq!(routes.find("/a/b"), Some("/{*path}"));
    }
}
