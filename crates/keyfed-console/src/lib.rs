//! The operator's console as pure rendering: each page is a function of the
//! Admin service's messages (and of the caller's role) to HTML, with seats
//! bars and usage charts drawn as SVG on the server. No I/O here: the node's
//! `console` module fetches, routes, keeps sessions and checks CSRF tokens.
//!
//! Templates are `maud`'s `html!`: compiled with the crate, escaping every
//! interpolated value unless it is `PreEscaped`, and no template files to ship.
use keyfed_wire::v1 as pb;
use maud::{html, Markup, PreEscaped, DOCTYPE};

mod lists;
mod pages;
pub mod widgets;

pub use lists::{audit, commands, denials, notifications, stations, StationFilter};
pub use pages::{dashboard, key_page, tree, urlencode, Dashboard, KeyPage, Tree};

/// The stylesheet served at [`CSS_PATH`].
pub const CSS: &str = include_str!("../assets/console.css");
/// The script served at [`JS_PATH`]: live notifications and confirm dialogs.
pub const JS: &str = include_str!("../assets/console.js");
pub const CSS_PATH: &str = "/console.css";
pub const JS_PATH: &str = "/console.js";

/// A fetch that may have failed: the Admin service's error message.
pub type Fetched<T> = Result<T, String>;

/// What every page knows about its caller and the node.
pub struct View<'a> {
    /// This node's id (from `Status`; empty when that failed).
    pub node_id: &'a str,
    /// The node's clock, RFC 3339.
    pub now: &'a str,
    /// Who is logged in, e.g. `ops (admin)`.
    pub actor: &'a str,
    /// The admin role: forms are shown. A read-only caller sees none.
    pub can_write: bool,
    /// The session's CSRF token, put into every form.
    pub csrf: &'a str,
    /// The outcome of the write this page follows, if any.
    pub flash: Option<&'a Flash>,
    /// Whether log-out makes sense (a token session, not a loopback one).
    pub logged_in: bool,
}

/// A write's outcome, shown once on the next page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flash {
    Done(String),
    Failed(String),
}

/// The pages in the navigation bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Dashboard,
    Tree,
    Stations,
    Notifications,
    Denials,
    Audit,
    Commands,
    None,
}

const NAV: &[(Nav, &str, &str)] = &[
    (Nav::Dashboard, "/", "Dashboard"),
    (Nav::Tree, "/tree", "Federation"),
    (Nav::Stations, "/stations", "Stations"),
    (Nav::Notifications, "/notifications", "Notifications"),
    (Nav::Denials, "/denials", "Denials"),
    (Nav::Audit, "/audit", "Audit"),
    (Nav::Commands, "/commands", "Commands"),
];

/// The hidden CSRF field every write form carries.
#[must_use]
pub fn csrf_field(v: &View<'_>) -> Markup {
    html! { input type="hidden" name="csrf" value=(v.csrf); }
}

/// A whole page: head, navigation, the flash message and `body`.
#[must_use]
pub fn layout(v: &View<'_>, here: Nav, title: &str, body: &Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " — keyfed " (v.node_id) }
                link rel="stylesheet" href=(CSS_PATH);
                script src=(JS_PATH) defer {}
            }
            body {
                header {
                    span.node { "keyfed " (v.node_id) }
                    nav {
                        @for (n, href, label) in NAV {
                            a class=[(*n == here).then_some("here")] href=(href) { (label) } " "
                        }
                    }
                    span.who {
                        (v.actor)
                        @if !v.can_write { " · read-only" }
                    }
                    @if v.logged_in {
                        form.inline method="post" action="/logout" {
                            (csrf_field(v))
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main {
                    @match v.flash {
                        Some(Flash::Done(m)) => div.flash.ok role="status" { (m) },
                        Some(Flash::Failed(m)) => div.flash.err role="alert" { (m) },
                        None => {},
                    }
                    h1 { (title) }
                    (body)
                    p.muted { "node clock " (v.now) }
                }
            }
        }
    }
    .into_string()
}

/// A failed fetch, in place of the section it would have filled.
#[must_use]
pub fn failed(what: &str, message: &str) -> Markup {
    html! { div.error role="alert" { "Could not load " (what) ": " (message) } }
}

/// The log-in page; `csrf` goes into its form (and the node's cookie).
#[must_use]
pub fn login(error: Option<&str>, tls: bool, csrf: &str) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Log in — keyfed" }
                link rel="stylesheet" href=(CSS_PATH);
            }
            body {
                div.login {
                    h1 { "keyfed console" }
                    @if let Some(e) = error { div.error role="alert" { (e) } }
                    form method="post" action="/login" {
                        input type="hidden" name="csrf" value=(csrf);
                        label for="token" { "Admin token" }
                        input #token type="password" name="token" autocomplete="current-password" autofocus required;
                        button type="submit" { "Log in" }
                    }
                    p.muted {
                        "The token is one of the node's [[admin_tokens]]; it is kept on the server, behind an HttpOnly session cookie"
                        @if !tls { " (this node serves plain HTTP: use it on a trusted network or configure [tls])" }
                        "."
                    }
                }
            }
        }
    }
    .into_string()
}

/// A page that is only an error (a refused write, an unknown page).
#[must_use]
pub fn error_page(v: &View<'_>, title: &str, message: &str) -> String {
    let body = html! {
        div.error role="alert" { (message) }
        p { a href="/" { "Back to the dashboard" } }
    };
    layout(v, Nav::None, title, &body)
}

/// The kind of an object, as people say it.
#[must_use]
pub fn kind_name(kind: i32) -> &'static str {
    match pb::ObjectKind::try_from(kind) {
        Ok(pb::ObjectKind::Station) => "station",
        Ok(pb::ObjectKind::Server) => "server",
        _ => "",
    }
}

/// `PreEscaped` is re-exported for callers that build markup themselves.
pub type Html = PreEscaped<String>;

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> View<'static> {
        View {
            node_id: "main",
            now: "2026-01-01T00:00:00Z",
            actor: "ops (admin)",
            can_write: true,
            csrf: "c5rf\"<tok>",
            flash: None,
            logged_in: true,
        }
    }

    #[test]
    fn every_interpolated_value_is_escaped() {
        let page = error_page(&view(), "<b>t</b>", "<script>alert(1)</script>");
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("&lt;b&gt;t&lt;/b&gt;"));
        // attribute values too: the CSRF token cannot break out of value=""
        assert!(page.contains(r#"value="c5rf&quot;&lt;tok&gt;""#), "{page}");
    }

    #[test]
    fn a_read_only_caller_is_told_so_and_the_flash_is_shown() {
        let f = Flash::Failed("AssignSeats changes the node".into());
        let v = View {
            can_write: false,
            flash: Some(&f),
            ..view()
        };
        let page = layout(&v, Nav::Dashboard, "Dashboard", &html! {});
        assert!(page.contains("read-only"));
        assert!(page.contains(r#"class="flash err""#) && page.contains("AssignSeats changes"));
        assert!(
            page.contains(r#"<a class="here" href="/">Dashboard</a>"#),
            "{page}"
        );
    }
}
