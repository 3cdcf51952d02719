//! Who may see the dashboard: the holder of the cluster token, as a header (scripts, the CLI,
//! Prometheus) or through a session cookie (people, in a browser).
//!
//! - `GET /login` shows a form asking for the token; `POST /login` with the right one starts
//!   a session: a random 256-bit id in an `HttpOnly; SameSite=Strict` cookie, valid for
//!   [`SESSION_LIFETIME`].
//! - `POST /api/login-ticket` (with the token) makes a one-time *ticket* valid for
//!   [`TICKET_LIFETIME`]; opening `/login?ticket=…` spends it for a session. `manta dashboard`
//!   prints such a link, as Jupyter prints its token URL, so nobody pastes the token itself
//!   into a browser or a URL.
//! - Any other request without the token or a live session is refused before its handler
//!   runs: pages redirect to the login form, `/api/…` and `/metrics` answer 401.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Form, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use manta_flight::auth::Token;
use parking_lot::Mutex;
use serde::Deserialize;

use super::{Dashboard, html};

/// How long a browser session lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// How long a login ticket may wait to be used.
pub const TICKET_LIFETIME: Duration = Duration::from_secs(300);

/// The most sessions (and, separately, tickets) kept; the oldest go first.
const KEPT: usize = 1_000;

/// The session cookie's name.
const COOKIE: &str = "manta_session";

/// Random secrets that expire: sessions and tickets.
#[derive(Default)]
pub struct Secrets {
    live: Mutex<HashMap<String, Instant>>,
}

impl Secrets {
    /// A new secret, valid for `lifetime`.
    pub(super) fn make(&self, lifetime: Duration) -> String {
        let secret = Token::generate().secret().to_string();
        let mut live = self.live.lock();
        live.retain(|_, expires| *expires > Instant::now());
        if live.len() >= KEPT
            && let Some(oldest) = live.iter().min_by_key(|(_, e)| **e).map(|(s, _)| s.clone())
        {
            live.remove(&oldest);
        }
        live.insert(secret.clone(), Instant::now() + lifetime);
        secret
    }

    fn valid(&self, secret: &str) -> bool {
        self.live
            .lock()
            .get(secret)
            .is_some_and(|expires| *expires > Instant::now())
    }

    /// Whether `secret` was live; it is not any more.
    fn spend(&self, secret: &str) -> bool {
        self.live
            .lock()
            .remove(secret)
            .is_some_and(|expires| expires > Instant::now())
    }
}

/// The session id in the request's cookies, if any.
fn session_of(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// Whether the request presents the token or a live session.
fn allowed(dashboard: &Dashboard, headers: &HeaderMap) -> bool {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| dashboard.head.token().accepts(v));
    token || session_of(headers).is_some_and(|s| dashboard.sessions.valid(s))
}

/// The middleware in front of everything but the login routes.
pub async fn require_login(
    State(dashboard): State<Arc<Dashboard>>,
    request: Request,
    next: Next,
) -> Response {
    if allowed(&dashboard, request.headers()) {
        return next.run(request).await;
    }
    let path = request.uri().path();
    if path.starts_with("/api/") || path == "/metrics" {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({
                "error": "present the cluster token: Authorization: Bearer <token>"
            })),
        )
            .into_response();
    }
    let back = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    Redirect::to(&format!("/login?next={}", html::url_segment(&back))).into_response()
}

/// Where to go after logging in: a path of this site, never another site.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.into(),
        _ => "/".into(),
    }
}

fn login_form(next: &str, error: Option<&str>) -> String {
    let error = error.map_or(String::new(), |e| {
        format!("<p class=bad>{}</p>", html::escape(e))
    });
    html::plain_page(
        "sign in",
        &format!(
            "<form class=login method=post action='/login'><h1>Sign in</h1>{error}\
             <label>Cluster token (<code>~/.manta/head-&lt;port&gt;.token</code> on the head's \
             machine, or run <code>manta dashboard</code> for a link)\
             <input type=text name=username value=manta autocomplete=username hidden>\
             <input type=password name=token autocomplete=current-password autofocus></label>\
             <input type=hidden name=next value='{}'><button>Sign in</button></form>",
            html::escape(next)
        ),
    )
}

/// A response that starts a session and goes to `next`.
fn signed_in(dashboard: &Dashboard, next: &str) -> Response {
    let session = dashboard.sessions.make(SESSION_LIFETIME);
    let cookie = format!(
        "{COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_LIFETIME.as_secs()
    );
    (
        [(header::SET_COOKIE, cookie)],
        Redirect::to(&safe_next(Some(next))),
    )
        .into_response()
}

/// `?next=PATH&ticket=TICKET`, both optional.
#[derive(Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
    ticket: Option<String>,
}

/// `GET /login`: the form, or a ticket spent for a session.
pub async fn login_page(
    State(dashboard): State<Arc<Dashboard>>,
    Query(query): Query<LoginQuery>,
) -> Response {
    let next = safe_next(query.next.as_deref());
    match query.ticket {
        Some(ticket) if dashboard.tickets.spend(&ticket) => signed_in(&dashboard, &next),
        Some(_) => (
            StatusCode::UNAUTHORIZED,
            Html(login_form(
                &next,
                Some("that link has been used or has expired: sign in with the token"),
            )),
        )
            .into_response(),
        None => Html(login_form(&next, None)).into_response(),
    }
}

/// The login form: the token, and where to go next.
#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
    next: Option<String>,
}

/// `POST /login`: the token, checked in constant time.
pub async fn login(
    State(dashboard): State<Arc<Dashboard>>,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = safe_next(form.next.as_deref());
    if dashboard
        .head
        .token()
        .accepts(&format!("Bearer {}", form.token.trim()))
    {
        signed_in(&dashboard, &next)
    } else {
        (
            StatusCode::UNAUTHORIZED,
            Html(login_form(&next, Some("that is not the cluster token"))),
        )
            .into_response()
    }
}

/// `POST /api/login-ticket` (behind the token): a one-time link to a session.
pub async fn ticket(State(dashboard): State<Arc<Dashboard>>) -> Response {
    axum::Json(serde_json::json!({
        "url": dashboard.login_link("/"),
        "expires_in_seconds": TICKET_LIFETIME.as_secs(),
    }))
    .into_response()
}

/// `GET /logout`: the session ends.
pub async fn logout(State(dashboard): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    if let Some(session) = session_of(&headers) {
        dashboard.sessions.spend(session);
    }
    (
        [(
            header::SET_COOKIE,
            format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
        )],
        Redirect::to("/login"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(safe_next(Some("/jobs/job-1")), "/jobs/job-1");
        assert_eq!(safe_next(Some("//evil.example")), "/");
        assert_eq!(safe_next(Some("https://evil.example")), "/");
        assert_eq!(safe_next(Some("/\\evil.example")), "/");
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn a_ticket_is_spent_once() {
        let tickets = Secrets::default();
        let ticket = tickets.make(TICKET_LIFETIME);
        assert!(tickets.valid(&ticket));
        assert!(tickets.spend(&ticket));
        assert!(!tickets.spend(&ticket));
        assert!(!tickets.spend("made-up"));
        let expired = tickets.make(Duration::ZERO);
        assert!(!tickets.spend(&expired));
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "a=1; manta_session=abc; b=2".parse().unwrap(),
        );
        assert_eq!(session_of(&headers), Some("abc"));
        headers.insert(header::COOKIE, "manta_sessionx=abc".parse().unwrap());
        assert_eq!(session_of(&headers), None);
    }
}
