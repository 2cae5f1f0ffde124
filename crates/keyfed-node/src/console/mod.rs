//! The operator's console on the API's listener: every path not under
//! `/api/`. Each page is one or more calls to the same guarded Admin
//! service the API uses, with the session's token, so roles, audit and
//! errors are the Admin service's; `keyfed_console` renders the replies.
//! Log-in trades an admin token for a session cookie; every POST carries
//! the session's CSRF token.
use crate::api::{events, ApiBody, ApiError, Call, GuardedAdmin, MAX_BODY_BYTES};
use crate::auth::{code_name, Role};
use bytes::Bytes;
use form::Form;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use keyfed_console::{self as ui, Flash, View};
use keyfed_proto::v1 as pb;
use prost::Message;
use session::Sessions;
use tokio_util::sync::CancellationToken;
use tonic::codegen::http;
use tonic::Code;

mod form;
mod pages;
mod session;

type Response = http::Response<ApiBody>;

/// Stations on one page of the stations list.
const STATIONS_PAGE: u32 = 50;
/// Audit entries on one page.
const AUDIT_PAGE: u32 = 100;
/// Notifications shown when the page opens (newer ones arrive live).
const NOTIFICATIONS_SHOWN: usize = 200;

/// One node's console: its sessions and how its cookie is set.
pub struct Console {
    sessions: Sessions,
    /// TLS is on: the cookie is `Secure`.
    tls: bool,
    /// No admin tokens: no log-in; the Admin service answers loopback
    /// callers (and administrators' certificates) as before.
    open: bool,
    /// `[peer_consoles]`: where each peer's console is, for the tree.
    peer_consoles: std::collections::BTreeMap<String, String>,
    /// The node, for the page header's id and clock (no Admin call, so no
    /// page pays for `Status`'s counting).
    node: crate::node::Node,
}

/// The caller of one console request, after its session was found.
struct Caller {
    call: Call,
    sid: String,
    session: session::Session,
    node_id: String,
    now: String,
}

impl Console {
    pub fn new(tls: bool, admin: &GuardedAdmin) -> Self {
        Self {
            sessions: Sessions::new(),
            tls,
            open: !admin.takes_tokens(),
            peer_consoles: admin.node().config.peer_consoles.clone(),
            node: admin.node().clone(),
        }
    }

    /// Answers one console request; never an API error body.
    pub async fn handle(
        &self,
        call: Call,
        req: http::Request<Incoming>,
        stop: CancellationToken,
    ) -> Response {
        use http::Method as M;
        let path = req.uri().path().to_owned();
        match (req.method(), path.as_str()) {
            (&M::GET, ui::CSS_PATH) => return asset("text/css; charset=utf-8", ui::CSS),
            (&M::GET, ui::JS_PATH) => return asset("text/javascript; charset=utf-8", ui::JS),
            (&M::GET, "/favicon.ico") => return text(http::StatusCode::NOT_FOUND, "no icon"),
            (&M::GET, "/login") if !self.open => {
                return self.login_page(req.headers(), http::StatusCode::OK, None)
            }
            (&M::POST, "/login") if !self.open => return self.login(call, req).await,
            _ => {}
        }
        let (caller, cookie) = match self.caller(call, req.headers()) {
            Some(c) => c,
            None if req.method() == M::GET => return redirect("/login", None),
            None => {
                let msg = "your session has ended: log in again";
                return self.login_page(req.headers(), http::StatusCode::UNAUTHORIZED, Some(msg));
            }
        };
        let mut reply = if req.method() == M::POST {
            self.post(caller, req).await
        } else if req.method() == M::GET && path == "/events" {
            // the notification feed as SSE, with the session's token
            match events::stream(caller.call, req, stop).await {
                Ok(r) => r,
                Err(e) => text(e.http, &e.message),
            }
        } else if req.method() == M::GET {
            pages::get(&caller, &path, req.uri().query(), &self.peer_consoles).await
        } else {
            text(
                http::StatusCode::METHOD_NOT_ALLOWED,
                "the console takes GET and POST",
            )
        };
        if let Some(c) = cookie {
            if let Ok(v) = http::HeaderValue::from_str(&c) {
                reply.headers_mut().append(http::header::SET_COOKIE, v);
            }
        }
        reply
    }

    /// The request's session (on a node without tokens one is opened at
    /// once; then the new cookie is returned too).
    fn caller(
        &self,
        mut call: Call,
        headers: &http::HeaderMap,
    ) -> Option<(Caller, Option<String>)> {
        let found = headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(session::from_cookie_header)
            .and_then(|sid| self.sessions.get(sid).map(|s| (sid.to_owned(), s)));
        let (sid, session, cookie) = match found {
            Some((sid, s)) => (sid, s, None),
            None if self.open => {
                let sid = self
                    .sessions
                    .open(None, "local (no admin tokens)".into(), true);
                let s = self.sessions.get(&sid)?;
                let c = session::set_cookie(&sid, self.tls);
                (sid, s, Some(c))
            }
            None => return None,
        };
        // the session's token, never the request's own Authorization
        call.authorization = session
            .token
            .as_ref()
            .and_then(|t| http::HeaderValue::from_str(&format!("Bearer {t}")).ok());
        let caller = Caller {
            call,
            sid,
            session,
            node_id: self.node.id().to_owned(),
            now: crate::convert::ts(self.node.engine.now()),
        };
        Some((caller, cookie))
    }

    /// The log-in page, its CSRF token in the form and in a cookie: the one
    /// the browser has (another tab, or a request that followed a redirect
    /// here, must not invalidate the form on screen), else a fresh one.
    fn login_page(
        &self,
        headers: &http::HeaderMap,
        status: http::StatusCode,
        error: Option<&str>,
    ) -> Response {
        let csrf = login_token(headers)
            .filter(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()))
            .map_or_else(session::random_hex, str::to_owned);
        let mut r = html(status, ui::login(error, self.tls, &csrf));
        if let Ok(v) = http::HeaderValue::from_str(&session::login_cookie(&csrf, self.tls)) {
            r.headers_mut().insert(http::header::SET_COOKIE, v);
        }
        r
    }

    async fn login(&self, mut call: Call, req: http::Request<Incoming>) -> Response {
        let headers = req.headers().clone();
        let fail = |code, msg: &str| self.login_page(&headers, code, Some(msg));
        let sent = login_token(req.headers()).unwrap_or_default().to_owned();
        let form = match read_form(req).await {
            Ok(f) => f,
            Err(e) => return fail(e.http, &e.message),
        };
        if sent.is_empty() || !session::same_secret(form.get("csrf"), &sent) {
            return fail(
                http::StatusCode::FORBIDDEN,
                "the log-in form's CSRF token is missing or wrong: log in from this page",
            );
        }
        let token = form.get("token").trim().to_owned();
        let Ok(bearer) = http::HeaderValue::from_str(&format!("Bearer {token}")) else {
            return fail(
                http::StatusCode::BAD_REQUEST,
                "the token has characters a token cannot have",
            );
        };
        call.authorization = Some(bearer);
        // the Admin service decides (and audits a refusal)
        if let Err(e) = call
            .message::<_, pb::NodeStatus>("Status", &pb::Empty {})
            .await
        {
            return fail(e.http, &e.message);
        }
        let Some((name, role)) = call.admin.token_role(&token) else {
            return fail(
                http::StatusCode::UNAUTHORIZED,
                "the admin token is not valid on this node",
            );
        };
        let can_write = role == Role::Admin;
        let actor = format!("{name} ({})", if can_write { "admin" } else { "read-only" });
        let sid = self.sessions.open(Some(token), actor, can_write);
        redirect("/", Some(session::set_cookie(&sid, self.tls)))
    }

    /// A write: the CSRF token first, then the Admin call; success goes
    /// back to a page with the outcome, a refusal is an error page with
    /// the refusal's HTTP status.
    async fn post(&self, c: Caller, req: http::Request<Incoming>) -> Response {
        let path = req.uri().path().to_owned();
        let form = match read_form(req).await {
            Ok(f) => f,
            Err(e) => return error_page(&c, e.http, "The form was not read", &e.message),
        };
        if !session::same_secret(form.get("csrf"), &c.session.csrf) {
            return error_page(
                &c,
                http::StatusCode::FORBIDDEN,
                "Refused",
                "the form's CSRF token is missing or wrong; reload the page and try again",
            );
        }
        if path == "/logout" {
            self.sessions.close(&c.sid);
            return redirect("/login", Some(session::clear_cookie(self.tls)));
        }
        match pages::write(&c, &path, &form).await {
            Ok((back, done)) => {
                self.sessions.flash(&c.sid, Flash::Done(done));
                redirect(&back, None)
            }
            Err(e) => error_page(&c, e.http, "Refused", &failure(&e)),
        }
    }
}

/// The log-in form's token in the request's cookies.
fn login_token(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| session::cookie(h, session::LOGIN_COOKIE))
}

/// An Admin error as the console shows it: the code's name and message.
fn failure(e: &ApiError) -> String {
    format!("{}: {}", code_name(e.code), e.message)
}

impl Caller {
    /// One Admin RPC; its reply or the error as the page shows it.
    async fn fetch<Req: Message, Resp: Message + Default>(
        &self,
        rpc: &str,
        req: &Req,
    ) -> ui::Fetched<Resp> {
        self.call.message(rpc, req).await.map_err(|e| failure(&e))
    }

    async fn write<Req: Message, Resp: Message + Default>(
        &self,
        rpc: &str,
        req: &Req,
    ) -> Result<Resp, ApiError> {
        self.call.message(rpc, req).await
    }

    /// The view every page is rendered in.
    fn view(&self) -> View<'_> {
        View {
            node_id: &self.node_id,
            now: &self.now,
            actor: &self.session.actor,
            can_write: self.session.can_write,
            csrf: &self.session.csrf,
            flash: self.session.flash.as_ref(),
            logged_in: self.session.token.is_some(),
        }
    }
}

fn error_page(c: &Caller, status: http::StatusCode, title: &str, message: &str) -> Response {
    html(status, ui::error_page(&c.view(), title, message))
}

async fn read_form(req: http::Request<Incoming>) -> Result<Form, ApiError> {
    let (parts, body) = req.into_parts();
    let too_large = || {
        ApiError::new(
            Code::ResourceExhausted,
            format!("the form is larger than {MAX_BODY_BYTES} bytes"),
        )
        .with_http(http::StatusCode::PAYLOAD_TOO_LARGE)
    };
    let bytes = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(e) => {
            return Err(ApiError::new(
                Code::Cancelled,
                format!("reading the form: {e}"),
            ))
        }
    };
    let ct = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    match form::boundary(ct) {
        Some(b) => Form::multipart(&bytes, b),
        None => Form::urlencoded(&bytes),
    }
}

fn with_headers(status: http::StatusCode, content_type: &str, body: Bytes) -> Response {
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CACHE_CONTROL, "no-store")
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "same-origin")
        // scripts, styles and forms from this origin only; never framed
        .header(
            "content-security-policy",
            "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        )
        .body(Full::new(body).boxed())
        .expect("static response parts are valid")
}

fn html(status: http::StatusCode, page: String) -> Response {
    with_headers(status, "text/html; charset=utf-8", Bytes::from(page))
}

fn text(status: http::StatusCode, message: &str) -> Response {
    with_headers(
        status,
        "text/plain; charset=utf-8",
        Bytes::from(format!("{message}\n")),
    )
}

fn asset(content_type: &str, body: &'static str) -> Response {
    with_headers(
        http::StatusCode::OK,
        content_type,
        Bytes::from_static(body.as_bytes()),
    )
}

/// 303 See Other to `to` (after a POST the browser GETs it).
fn redirect(to: &str, cookie: Option<String>) -> Response {
    let mut r = with_headers(
        http::StatusCode::SEE_OTHER,
        "text/plain; charset=utf-8",
        Bytes::new(),
    );
    if let Ok(v) = http::HeaderValue::from_str(to) {
        r.headers_mut().insert(http::header::LOCATION, v);
    }
    if let Some(c) = cookie.and_then(|c| http::HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(http::header::SET_COOKIE, c);
    }
    r
}
